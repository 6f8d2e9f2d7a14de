"""Streaming, resumable output for `nnn embed`.

Rows are appended batch by batch to ``OUT.partial`` (an HDF5 file with resizable
``embeddings``, ``ids``, ``skipped_ids`` and ``skipped_reasons`` datasets), so memory does not
grow with the input.  After each batch the file records how many input records are done and
how many rows are valid, and is flushed: a run that is killed loses at most the batch in
flight.  A later run with the same resume key (input fingerprint, model, modality, dtype...)
opens the partial file, trims any rows past the last commit and goes on from there.  When the
input is exhausted the partial file is renamed to ``OUT`` (HDF5), or converted to ``OUT.npy``
plus a sidecar ``OUT.npy.json`` (ids, skipped items, attributes).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from nnn_cli.errors import InputError, NNNError, ParameterError
from nnn_cli.data.locks import DEFAULT_WAIT, exclusive_lock
from nnn_cli.data.outputs import atomic_output, output_error
from nnn_cli.signals import mark_published
from nnn_cli.data.h5 import is_h5_path

RESUME_KEY_ATTR = "nnn_resume_key"
STRING_DATASETS = ("ids", "skipped_ids", "skipped_reasons")
OUTPUT_DTYPES = ("float32", "float16")


def partial_path(output: Path) -> Path:
    """Where an unfinished run keeps its rows: ``OUT.partial`` beside the output."""
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


class PartialStore:
    """The partial HDF5 file of one run; use :meth:`open`, then :meth:`append`, then :meth:`finish`."""

    def __init__(self, path: Path, handle, key: dict, dtype: str, resumed: bool, discarded: str | None):
        self.lock: contextlib.ExitStack | None = None  # the exclusive lock on the partial file (see open)
        self.path = path
        self.f = handle
        self.key = key
        self.dtype = dtype
        self.resumed = resumed
        self.discarded = discarded  # why an old partial file was thrown away, if one was

    # -- opening ---------------------------------------------------------
    @classmethod
    def open(cls, output: Path, key: dict, dtype: str = "float32", restart: bool = False,
             wait: float = DEFAULT_WAIT) -> "PartialStore":
        """Open (resume) or create the partial file of ``output`` for a run identified by ``key``.

        The partial file is locked for the store's life (:mod:`nnn_cli.data.locks`): a second run
        on the same output waits up to ``wait`` seconds, then raises ``BusyError`` (exit 2) naming
        the holder; it never deletes, resumes or publishes the first run's file.  A partial file
        from a different input or model is refused unless ``restart``; an unreadable one (killed
        mid-write) is discarded and the run starts over.
        """
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
    def _open_locked(cls, output: Path, key: dict, dtype: str, restart: bool) -> "PartialStore":
        import h5py

        if dtype not in OUTPUT_DTYPES:
            raise ParameterError(f"unknown output dtype {dtype!r}: use float32 or float16")
        path = partial_path(output)
        key_json = json.dumps(key, sort_keys=True)
        discarded = None
        if path.exists() and restart:
            path.unlink()
            discarded = "--restart"
        if path.exists():
            try:
                handle = h5py.File(path, "r+")
                stored = handle.attrs.get(RESUME_KEY_ATTR)
                rows = int(handle.attrs.get("rows", -1))
            except (OSError, ValueError, KeyError) as exc:
                with contextlib.suppress(OSError):
                    path.unlink()
                discarded = f"unreadable partial file ({str(exc).splitlines()[0][:80]})"
            else:
                stored = stored.decode() if isinstance(stored, bytes) else stored
                if stored != key_json:
                    handle.close()
                    raise ParameterError(
                        f"{path}: an unfinished run for a different input, model or options is stored here; "
                        "rerun the same command to resume it, or add --restart to discard it")
                if rows < 0:
                    handle.close()
                    path.unlink()
                    discarded = "partial file without a row count"
                else:
                    store = cls(path, handle, key, dtype, True, None)
                    store._trim(rows)
                    return store
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"{output}: output folder {parent} does not exist")
        try:
            handle = h5py.File(path, "w")
        except OSError as exc:
            raise output_error(path, exc) from None
        handle.attrs[RESUME_KEY_ATTR] = key_json
        handle.attrs["records_done"] = 0
        handle.attrs["rows"] = 0
        handle.attrs["complete"] = False
        str_dtype = h5py.string_dtype()
        for name in STRING_DATASETS:
            handle.create_dataset(name, shape=(0,), maxshape=(None,), dtype=str_dtype, chunks=(1024,))
        handle.flush()
        return cls(path, handle, key, dtype, False, discarded)

    def _trim(self, rows: int) -> None:
        """Drop rows written after the last commit (a run killed between write and commit)."""
        if "embeddings" in self.f and self.f["embeddings"].shape[0] != rows:
            self.f["embeddings"].resize(rows, axis=0)
        if self.f["ids"].shape[0] != rows:
            self.f["ids"].resize((rows,))
        n_skip = int(self.f.attrs.get("skipped", 0))
        for name in ("skipped_ids", "skipped_reasons"):
            if self.f[name].shape[0] != n_skip:
                self.f[name].resize((n_skip,))

    # -- state -----------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return bool(self.f.id.valid)

    @property
    def records_done(self) -> int:
        return int(self.f.attrs["records_done"])

    @property
    def rows(self) -> int:
        return int(self.f.attrs["rows"])

    @property
    def n_skipped(self) -> int:
        return int(self.f.attrs.get("skipped", 0))

    @property
    def dim(self) -> int | None:
        return int(self.f["embeddings"].shape[1]) if "embeddings" in self.f else None

    # -- writing ---------------------------------------------------------
    def append(self, vectors: np.ndarray, ids: list[str], skipped: list[tuple[str, str]], records: int) -> None:
        """Append one batch (normalised rows, their ids, skipped items) and commit ``records`` as done.

        An OS error (disk full) raises ``OutputError`` ("disk full writing OUT.partial") and deletes
        the partial file: HDF5 gives no guarantee about a file whose write failed half-way, so
        nothing is resumed from it (a rerun starts over)."""
        try:
            self._append(vectors, ids, skipped, records)
        except OSError as exc:
            error = output_error(self.path, exc)
            self.discard()
            raise error from None

    def _append(self, vectors: np.ndarray, ids: list[str], skipped: list[tuple[str, str]], records: int) -> None:
        n = len(ids)
        if n:
            if "embeddings" not in self.f:
                d = int(vectors.shape[1])
                self.f.create_dataset("embeddings", shape=(0, d), maxshape=(None, d), dtype=self.dtype,
                                      chunks=(max(1, min(256, (1 << 20) // (4 * d))), d))
            emb = self.f["embeddings"]
            if vectors.shape[1] != emb.shape[1]:
                raise InputError(f"the model returned {vectors.shape[1]}-dimensional vectors, "
                                 f"but {self.path} holds {emb.shape[1]}-dimensional ones")
            start = self.rows
            emb.resize(start + n, axis=0)
            emb[start:] = vectors.astype(self.dtype)
            self.f["ids"].resize((start + n,))
            self.f["ids"][start:] = np.asarray(ids, dtype=object)
        if skipped:
            s0 = self.n_skipped
            for col, name in enumerate(("skipped_ids", "skipped_reasons")):
                ds = self.f[name]
                ds.resize((s0 + len(skipped),))
                ds[s0:] = np.asarray([item[col] for item in skipped], dtype=object)
        self.f.attrs["rows"] = self.rows + n
        self.f.attrs["skipped"] = self.n_skipped + len(skipped)
        self.f.attrs["records_done"] = self.records_done + records
        self.f.flush()

    def skipped_items(self, limit: int | None = None) -> list[tuple[str, str]]:
        stop = self.n_skipped if limit is None else min(limit, self.n_skipped)
        ids = self.f["skipped_ids"].asstr()[:stop]
        reasons = self.f["skipped_reasons"].asstr()[:stop]
        return list(zip(map(str, ids), map(str, reasons)))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.f.close()
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def discard(self) -> None:
        """Delete the partial file (ours: the lock is held until it is gone), then close."""
        with contextlib.suppress(Exception):
            self.f.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.close()

    def finish(self, output: Path, attrs: dict) -> Path:
        """Record ``attrs``, mark complete, and move the rows to ``output`` (.h5 or .npy + sidecar).
        An OS error becomes ``OutputError`` (one line); the committed rows stay for a rerun."""
        try:
            return self._finish(output, attrs)
        except OSError as exc:
            if isinstance(exc, NNNError):
                raise
            raise output_error(output, exc) from None
        finally:
            self.close()

    def _finish(self, output: Path, attrs: dict) -> Path:
        from nnn_cli.data.h5 import set_attrs as _set_attrs

        self.f.attrs["complete"] = True
        _set_attrs(self.f, attrs)
        self.f.flush()
        if check_embed_output(output) == "h5":
            self.f.close()
            with open(self.path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.path, output)
            mark_published(output)
            return output
        emb = self.f["embeddings"]
        with atomic_output(output) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=emb.dtype, shape=emb.shape)
            step = 65536
            for start in range(0, emb.shape[0], step):
                arr[start:start + step] = emb[start:start + step]
            arr.flush()
            del arr
        sidecar = {
            **{k: v for k, v in attrs.items() if v is not None},
            "ids": [str(x) for x in self.f["ids"].asstr()[()]],
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped_items()],
        }
        with atomic_output(sidecar_path(output)) as tmp:
            tmp.write_text(json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        self.discard()
        return output
