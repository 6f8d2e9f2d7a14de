"""Streaming, resumable output for `nnn embed`: a store that cannot resume into garbage.

An unfinished run keeps its rows in the folder ``OUT.partial/``:

- ``embeddings.bin``: the rows, raw (output dtype, C order), appended batch by batch;
- ``ids.jsonl`` and ``skipped.jsonl``: one JSON value per row / per skipped item, appended alongside;
- ``manifest.json``: the commit marker: the resume key, dtype, dimension, the counts (records done,
  rows, skipped) and, for each data file, the committed length in bytes and the blake2b-128 of those
  bytes.

A batch is committed in this order: its bytes are appended to the data files, the files are
fsynced, then a new manifest is written to a temporary file, fsynced and renamed over the old one
(and the folder fsynced).  Whatever is past the manifest's lengths is an uncommitted tail: a run
killed (or out of disk) mid-batch leaves at most one such tail, and it is cut off on resume.  A
resume re-reads the committed bytes and checks their lengths, row counts and checksums against the
manifest before going on; if anything does not verify, the folder is discarded with a note
(``the partial file did not verify``) and the run starts over.  Plain files are used instead of a
resizable HDF5 file because HDF5 gives no guarantee about a file whose write failed half-way (on a
full disk it crashed, and a rerun resumed into zero rows).

An OS error while writing (disk full, read-only file system) is :class:`OutputError`, one line
(``disk full writing OUT.partial``), exit 2; the committed batches stay for a rerun.  When the input
is exhausted the rows are assembled into ``OUT`` (HDF5) or ``OUT.npy`` plus a sidecar
``OUT.npy.json`` through an atomic temporary file (a free-space check first: the output needs about
as much room again as the partial folder), then the folder is deleted.

Why one module of about 450 lines: the partial folder's writer, its manifest commit and the
verification on resume are one protocol (what is written is exactly what is checked); splitting it
would put the two halves of that contract in different files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nnn_cli.data.h5 import is_h5_path
from nnn_cli.data.locks import DEFAULT_WAIT, exclusive_lock
from nnn_cli.data.outputs import atomic_output, fsync_dir, output_error
from nnn_cli.errors import InputError, NNNError, OutputError, ParameterError

RESUME_KEY_ATTR = "nnn_resume_key"
OUTPUT_DTYPES = ("float32", "float16")
MANIFEST = "manifest.json"
FORMAT = "nnn-embed-partial/2"
DATA_FILES = {"embeddings": "embeddings.bin", "ids": "ids.jsonl", "skipped": "skipped.jsonl"}
NOT_VERIFIED = "the partial file did not verify"


def partial_path(output: Path) -> Path:
    """Where an unfinished run keeps its rows: the folder ``OUT.partial`` beside the output."""
    return output.with_name(output.name + ".partial")


def sidecar_path(output: Path) -> Path:
    """The JSON file beside a ``.npy`` output holding ids, skipped items and attributes."""
    return output.with_name(output.name + ".json")


def check_embed_output(output: Path) -> str:
    """``"h5"`` or ``"npy"`` from the output's suffix; anything else is a usage error."""
    if is_h5_path(output):
        return "h5"
    if output.suffix.lower() == ".npy":
        return "npy"
    raise ParameterError(f"{output}: output must end in .h5, .hdf5 or .npy")


def _digest(h) -> str:
    return h.hexdigest()


def _new_hash():
    return hashlib.blake2b(digest_size=16)


def _remove(path: Path) -> None:
    """Delete a partial folder (or an old-format partial file)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


class _NotVerified(Exception):
    pass


class PartialStore:
    """The partial folder of one run; use :meth:`open`, then :meth:`append`, then :meth:`finish`."""

    def __init__(self, path: Path, key: dict, dtype: str, resumed: bool, discarded: str | None):
        self.lock: contextlib.ExitStack | None = None  # the exclusive lock on the partial folder (see open)
        self.path = path
        self.key = key
        self.key_json = json.dumps(key, sort_keys=True)
        self.dtype = dtype
        self.resumed = resumed
        self.discarded = discarded  # why an old partial was thrown away, if one was
        self.state: dict[str, Any] = {"records_done": 0, "rows": 0, "skipped": 0, "dim": None}
        self.lengths = dict.fromkeys(DATA_FILES, 0)
        self.hashes = {name: _new_hash() for name in DATA_FILES}
        self.files: dict[str, BinaryIO] = {}

    # -- opening ---------------------------------------------------------
    @classmethod
    def open(
        cls, output: Path, key: dict, dtype: str = "float32", restart: bool = False, wait: float = DEFAULT_WAIT
    ) -> PartialStore:
        """Open (resume, after verifying) or create the partial folder of ``output`` for ``key``.

        The partial folder is locked for the store's life (:mod:`nnn_cli.data.locks`): a second run
        on the same output waits up to ``wait`` seconds, then raises ``BusyError`` (exit 2) naming
        the holder; it never deletes, resumes or publishes the first run's rows.  A partial folder
        from a different input or model is refused unless ``restart``; one whose committed rows do
        not verify (count, length, checksum) is discarded and the run starts over.
        """
        output = Path(output)
        if dtype not in OUTPUT_DTYPES:
            raise ParameterError(f"unknown output dtype {dtype!r}: use float32 or float16")
        parent = output.parent if str(output.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"{output}: output folder {parent} does not exist")
        lock = contextlib.ExitStack()
        lock.enter_context(exclusive_lock(partial_path(output), wait, "embedding output"))
        try:
            store = cls._open_locked(output, key, dtype, restart)
        except BaseException:
            lock.close()
            raise
        store.lock = lock
        return store

    @classmethod
    def _open_locked(cls, output: Path, key: dict, dtype: str, restart: bool) -> PartialStore:
        path = partial_path(output)
        discarded = None
        if (path.exists() or path.is_symlink()) and restart:
            _remove(path)
            discarded = "--restart"
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            _remove(path)
            discarded = f"{NOT_VERIFIED}: {path} is not a partial folder (an older nnn's partial file?)"
        if path.is_dir():
            store = cls(path, key, dtype, True, None)
            try:
                store._verify()
            except _NotVerified as why:
                store.close()
                _remove(path)
                discarded = f"{NOT_VERIFIED}: {why}"
            else:
                return store
        store = cls(path, key, dtype, False, discarded)
        try:
            path.mkdir()
            for fname in DATA_FILES.values():
                (path / fname).touch()
            store._open_files()
            store._write_manifest()
        except OSError as exc:
            store.close()
            _remove(path)
            raise output_error(path, exc) from None
        return store

    def _verify(self) -> None:
        """Check the committed rows against the manifest; cut off an uncommitted tail; keep the hashes."""
        try:
            manifest = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise _NotVerified("no manifest") from None
        except (OSError, ValueError) as exc:
            raise _NotVerified(f"unreadable manifest ({type(exc).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise _NotVerified("unknown manifest format")
        if manifest.get("key") != self.key_json:
            raise ParameterError(
                f"{self.path}: an unfinished run for a different input, model or options is stored here; "
                "rerun the same command to resume it, or add --restart to discard it"
            )
        try:
            state = {k: manifest[k] for k in ("records_done", "rows", "skipped", "dim")}
            files = manifest["files"]
            for k in ("records_done", "rows", "skipped"):
                if not isinstance(state[k], int) or state[k] < 0:
                    raise _NotVerified(f"bad count {k!r} in the manifest")
            dim = state["dim"]
            if dim is not None and (not isinstance(dim, int) or dim < 1):
                raise _NotVerified("bad dimension in the manifest")
            itemsize = np.dtype(self.dtype).itemsize
            if files["embeddings"]["bytes"] != state["rows"] * (dim or 0) * itemsize:
                raise _NotVerified("the row count does not match the committed bytes")
            lines = {"ids": state["rows"], "skipped": state["skipped"]}
            for name, fname in DATA_FILES.items():
                want_bytes, want_hash = int(files[name]["bytes"]), str(files[name]["blake2b"])
                fpath = self.path / fname
                if not fpath.is_file() or fpath.stat().st_size < want_bytes:
                    raise _NotVerified(f"{fname} is shorter than committed")
                h, newlines = _new_hash(), 0
                with open(fpath, "rb") as fh:
                    left = want_bytes
                    while left:
                        block = fh.read(min(left, 1 << 22))
                        if not block:
                            raise _NotVerified(f"{fname} is shorter than committed")
                        h.update(block)
                        newlines += block.count(b"\n")
                        left -= len(block)
                if h.hexdigest() != want_hash:
                    raise _NotVerified(f"checksum mismatch in {fname}")
                if name in lines and newlines != lines[name]:
                    raise _NotVerified(f"{fname} holds {newlines} committed lines, not {lines[name]}")
                self.hashes[name] = h
                self.lengths[name] = want_bytes
        except (KeyError, TypeError, ValueError, OSError) as exc:
            if isinstance(exc, NNNError):
                raise
            raise _NotVerified(f"bad manifest ({type(exc).__name__}: {exc})") from None
        self.state = state
        try:
            for name, fname in DATA_FILES.items():
                os.truncate(self.path / fname, self.lengths[name])  # the uncommitted tail, if any
            self._open_files()
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def _open_files(self) -> None:
        for name, fname in DATA_FILES.items():
            fh = open(self.path / fname, "r+b")
            fh.seek(self.lengths[name])
            self.files[name] = fh

    # -- state -----------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return bool(self.files)

    @property
    def records_done(self) -> int:
        return int(self.state["records_done"])

    @property
    def rows(self) -> int:
        return int(self.state["rows"])

    @property
    def n_skipped(self) -> int:
        return int(self.state["skipped"])

    @property
    def dim(self) -> int | None:
        return self.state["dim"]

    # -- writing ---------------------------------------------------------
    def _write_manifest(
        self, state: dict | None = None, lengths: dict | None = None, hashes: dict | None = None
    ) -> None:
        state = self.state if state is None else state
        lengths = self.lengths if lengths is None else lengths
        hashes = self.hashes if hashes is None else hashes
        doc = {
            "format": FORMAT,
            "key": self.key_json,
            "dtype": self.dtype,
            **state,
            "files": {name: {"bytes": lengths[name], "blake2b": _digest(hashes[name])} for name in DATA_FILES},
        }
        tmp = self.path / f".{MANIFEST}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(doc, indent=1).encode("utf-8") + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path / MANIFEST)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(self.path)

    def append(self, vectors: np.ndarray, ids: list[str], skipped: list[tuple[str, str]], records: int) -> None:
        """Append one batch (normalised rows, their ids, skipped items) and commit ``records`` as done.

        An OS error (disk full) raises ``OutputError`` ("disk full writing OUT.partial"); the
        batches committed before stay, the uncommitted tail is cut off (now, or on resume)."""
        n = len(ids)
        if n and vectors.ndim == 2 and self.dim is not None and vectors.shape[1] != self.dim:
            raise InputError(
                f"the model returned {vectors.shape[1]}-dimensional vectors, "
                f"but {self.path} holds {self.dim}-dimensional ones"
            )
        blobs = {
            "embeddings": np.ascontiguousarray(vectors[:n], dtype=self.dtype).tobytes() if n else b"",
            "ids": "".join(json.dumps(str(i), ensure_ascii=False) + "\n" for i in ids).encode("utf-8"),
            "skipped": "".join(json.dumps([str(i), str(r)], ensure_ascii=False) + "\n" for i, r in skipped).encode(
                "utf-8"
            ),
        }
        state = dict(self.state)
        if n and state["dim"] is None:
            state["dim"] = int(vectors.shape[1])
        state["rows"] += n
        state["skipped"] += len(skipped)
        state["records_done"] += records
        lengths, hashes = dict(self.lengths), {}
        try:
            for name, blob in blobs.items():
                fh = self.files[name]
                if blob:
                    fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
                h = self.hashes[name].copy()
                h.update(blob)
                hashes[name] = h
                lengths[name] += len(blob)
            self._write_manifest(state, lengths, hashes)
        except OSError as exc:
            error = output_error(self.path, exc)
            self._cut_tail()
            raise error from None
        self.state, self.lengths, self.hashes = state, lengths, hashes

    def _cut_tail(self) -> None:
        """Best effort: drop bytes past the committed lengths (truncating needs no free space)."""
        for name, fh in self.files.items():
            with contextlib.suppress(OSError, ValueError):
                fh.seek(self.lengths[name])
                fh.truncate(self.lengths[name])

    # -- reading ---------------------------------------------------------
    def _lines(self, name: str, limit: int | None = None) -> list:
        out: list = []
        with open(self.path / DATA_FILES[name], "rb") as fh:
            left = self.lengths[name]
            data = fh.read(left)
        for line in data.splitlines():
            if limit is not None and len(out) >= limit:
                break
            out.append(json.loads(line.decode("utf-8")))
        return out

    def skipped_items(self, limit: int | None = None) -> list[tuple[str, str]]:
        if not self.n_skipped or limit == 0:
            return []
        return [(str(i), str(r)) for i, r in self._lines("skipped", limit)]

    def ids(self) -> list[str]:
        return [str(i) for i in self._lines("ids")]

    def embeddings(self) -> np.ndarray:
        """The committed rows, memory-mapped read-only (the folder is locked: nobody truncates it)."""
        if not self.rows:
            return np.zeros((0, self.dim or 0), dtype=self.dtype)
        assert self.dim is not None  # set by the first batch with rows
        return np.memmap(self.path / DATA_FILES["embeddings"], dtype=self.dtype, mode="r", shape=(self.rows, self.dim))

    # -- closing ---------------------------------------------------------
    def close(self) -> None:
        for fh in self.files.values():
            with contextlib.suppress(Exception):
                fh.close()
        self.files = {}
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def discard(self) -> None:
        """Delete the partial folder (ours: the lock is held until it is gone), then close."""
        for fh in self.files.values():
            with contextlib.suppress(Exception):
                fh.close()
        self.files = {}
        _remove(self.path)
        self.close()

    def finish(self, output: Path, attrs: dict) -> Path:
        """Assemble the committed rows into ``output`` (.h5 or .npy + sidecar) atomically, then delete
        the partial folder.  An OS error becomes ``OutputError`` (one line); the rows stay for a rerun."""
        output = Path(output)
        try:
            self._check_space(output)
            if check_embed_output(output) == "h5":
                self._write_h5(output, attrs)
            else:
                self._write_npy(output, attrs)
        except OSError as exc:
            if isinstance(exc, NNNError):
                self.close()
                raise
            self.close()
            raise output_error(output, exc) from None
        except BaseException:
            self.close()
            raise
        self.discard()
        return output

    def _check_space(self, output: Path) -> None:
        """Refuse up front when the output cannot fit (HDF5 is not trusted to fail cleanly mid-write)."""
        need = self.lengths["embeddings"] + self.lengths["ids"] + self.lengths["skipped"]
        parent = output.parent if str(output.parent) else Path(".")
        with contextlib.suppress(OSError, AttributeError):
            st = os.statvfs(parent)
            if st.f_bavail * st.f_frsize < need:
                raise OutputError(f"disk full writing {output}")

    def _final_attrs(self, attrs: dict) -> dict:
        return {
            RESUME_KEY_ATTR: self.key_json,
            "records_done": self.records_done,
            "rows": self.rows,
            "skipped": self.n_skipped,
            "complete": True,
            **attrs,
        }

    def _write_h5(self, output: Path, attrs: dict) -> None:
        import h5py

        from nnn_cli.data.h5 import create_h5, set_attrs

        emb = self.embeddings()
        d = self.dim or 0
        str_dtype = h5py.string_dtype()
        skipped = self.skipped_items()
        with atomic_output(output) as tmp:
            with create_h5(tmp) as f:  # a full disk is an OSError here, never a crash in HDF5
                set_attrs(f, self._final_attrs(attrs))
                ds = f.create_dataset(
                    "embeddings",
                    shape=(self.rows, d),
                    maxshape=(None, d),
                    dtype=self.dtype,
                    chunks=(max(1, min(256, (1 << 20) // (4 * max(d, 1)))), max(d, 1)),
                )
                step = 65536
                for start in range(0, self.rows, step):
                    ds[start : start + step] = emb[start : start + step]
                for name, values in (
                    ("ids", self.ids()),
                    ("skipped_ids", [i for i, _ in skipped]),
                    ("skipped_reasons", [r for _, r in skipped]),
                ):
                    f.create_dataset(
                        name,
                        data=np.asarray(values, dtype=object),
                        shape=(len(values),),
                        maxshape=(None,),
                        dtype=str_dtype,
                        chunks=(1024,),
                    )
            del emb

    def _write_npy(self, output: Path, attrs: dict) -> None:
        emb = self.embeddings()
        with atomic_output(output) as tmp:
            # plain writes, not a writable memory map: on a full disk a mapped write is SIGBUS, not an error
            with open(tmp, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(emb))
                step = 65536
                for start in range(0, self.rows, step):
                    fh.write(np.ascontiguousarray(emb[start : start + step]).tobytes())
        del emb
        sidecar = {
            **{k: v for k, v in attrs.items() if v is not None},
            "ids": self.ids(),
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped_items()],
        }
        with atomic_output(sidecar_path(output)) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
