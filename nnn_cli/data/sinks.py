"""Sinks of the bias pipeline (see :mod:`nnn_cli.data.contracts`): a bias file, or a run folder.

**Bias file** (``.h5``/``.npy``, local): blocks are gathered on the driver and written once, atomically,
with full provenance (:func:`nnn_cli.data.biasfile.write_bias`).

**Run folder** (a local folder or a URL: ``s3://bucket/run``, ``gs://...``, ``file://...``)::

    manifest.json        format, inputs (per part: path, rows, dtype and one content hash per block of the
                         gallery / per partition of the reference), params, plan, blocks_done, complete
    blocks/bias_BBBBBB[.gN].npy, blocks/topk_BBBBBB[.gN].npy

Each block is recorded with its rows, file names, the blake2b checksum of each file's bytes, and the content
hash of the gallery rows it was computed from.  Readers and ``--resume`` verify what they keep: a block file
that is missing, truncated, edited, holds NaN, or names a path outside the folder is refused (readers: one
line naming the file, exit 2) or recomputed (resume).  ``manifest.json`` is first written when the first
block is done, and with ``"complete": true`` by :meth:`RunFolderSink.commit`; a fresh run that fails on bad
input removes what it wrote (:meth:`RunFolderSink.abort`), so a failed run leaves nothing that blocks the next.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnn_cli.data import objstore
from nnn_cli.data.biasfile import BiasFile, write_bias
from nnn_cli.data.contracts import BlockRecord
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.readahead import started
from nnn_cli.errors import InputError, MismatchError, ParameterError

MANIFEST = "manifest.json"
FORMAT = "nnn-bias-run/2"
BIAS_SUFFIXES = (".h5", ".hdf5", ".npy")
FILE_SUFFIXES = (".h5", ".hdf5", ".npy", ".npz", ".json")


def checksum(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def is_run_target(spec: str | os.PathLike) -> bool:
    """True when ``spec`` names a run folder: a URL, an existing folder, or a name without a suffix (a name
    with one is a bias file, refused by its sink unless ``.h5``/``.hdf5``/``.npy``)."""
    text = str(spec)
    if objstore.is_url(text) or text.endswith("/"):
        return True
    return Path(text).is_dir() or Path(text).suffix == ""


def inside(rel: str, target: str) -> str:
    """``rel`` as a path inside the run folder ``target`` (refused when absolute or escaping with ``..``)."""
    norm = posixpath.normpath(str(rel))
    if not rel or posixpath.isabs(norm) or norm == ".." or norm.startswith("../") or "\\" in rel or ":" in rel:
        raise InputError(
            f"{target}/{MANIFEST}: block path {rel!r} points outside the run folder; the manifest is damaged"
        )
    return norm


# ---------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------
@dataclass
class RunFolderSink:
    """A run folder (local or URL) as a :class:`~nnn_cli.data.contracts.Sink`; picklable (tasks write blocks)."""

    url: str
    storage_options: dict = field(default_factory=dict)
    generation: int = 0
    remote_writes: bool = True  # put_block runs inside the tasks: block data never travels to the driver
    manifest: dict = field(default_factory=dict, repr=False)
    _fresh: bool = field(default=False, repr=False)  # set by check(): no earlier run here
    _written: list = field(default_factory=list, repr=False)

    @property
    def target(self) -> str:
        return self.url

    def path(self, rel: str) -> str:
        return objstore.join(self.url, inside(rel, self.url))

    def _manifest_url(self) -> str:
        return objstore.join(self.url, MANIFEST)

    # -- before any work -----------------------------------------------------
    def check(self, resume: bool) -> dict | None:
        """The target is a folder we may write (scheme, reachability within --io-timeout); an earlier run
        there is refused unless ``resume``.  Returns that run's manifest (None if none).  Writes nothing."""
        objstore.check_output_url(self.url, self.storage_options, "run folder")
        if not objstore.is_url(self.url) and Path(self.url).exists() and not Path(self.url).is_dir():
            raise ParameterError(f"{self.url}: exists and is not a folder; give a folder for the run")
        if not objstore.is_url(self.url):
            parent = Path(self.url).resolve().parent
            if not parent.is_dir():
                raise ParameterError(f"{self.url}: parent folder {parent} does not exist")
        old = self.read_manifest() if self.exists() else None
        if old is not None and not resume:
            raise ParameterError(
                f"{self.url}: already holds a run ({MANIFEST}); pass --resume to finish it, or choose an empty folder"
            )
        self._fresh = old is None
        return old

    def exists(self) -> bool:
        return bool(objstore.bounded(lambda: objstore.exists(self._manifest_url(), self.storage_options), self.url))

    def read_manifest(self) -> dict:
        url = self._manifest_url()
        m = objstore.bounded(lambda: objstore.read_json(url, self.storage_options), url)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            got = m.get("format") if isinstance(m, dict) else None
            raise InputError(f"{url}: not an nnn bias run manifest (format {got!r}, expected {FORMAT!r})")
        for key in ("inputs", "params", "plan", "blocks_done"):
            if not isinstance(m.get(key), dict):
                raise InputError(f"{url}: has no {key!r}; the manifest is damaged")
        return m

    def kept_blocks(self, old: dict | None, header: dict, block_inputs: dict[int, str]) -> dict[int, BlockRecord]:
        """On --resume: the blocks of ``old`` whose files verify and whose gallery rows are unchanged
        (``block_inputs``: this run's content hash of each block's gallery rows); the rest are recomputed."""
        self.manifest = {**header, "blocks_done": {}, "complete": False, "generation": 0}
        self._planned = int(header["plan"]["blocks"])
        if old is None:
            return {}
        for key in ("params", "plan"):
            if _comparable(old.get(key)) != _comparable(header[key]):
                raise MismatchError(
                    f"{self.url}: cannot resume: the run's {key} differ from this run's (was {old.get(key)!r})"
                )
        _check_same_parts(old, header, "reference", self.url)
        _check_same_parts(old, header, "gallery", self.url, hashes=False)
        kept: dict[int, BlockRecord] = {}
        for key, rec in old["blocks_done"].items():
            b = int(key)
            try:
                block = self.verify_block(b, rec)
            except InputError:
                continue  # missing, truncated, edited, NaN: recomputed
            if rec.get("inputs", {}).get("gallery") == block_inputs.get(b):
                kept[b] = block
        self.manifest["blocks_done"] = {str(b): old["blocks_done"][str(b)] for b in kept}
        self.manifest["generation"] = int(old.get("generation", 0))
        self.generation = self.manifest["generation"]
        return kept

    # -- blocks --------------------------------------------------------------
    def block_names(self, block: int) -> dict[str, str]:
        gen = f".g{self.generation}" if self.generation else ""
        return {"bias": f"blocks/bias_{block:06d}{gen}.npy", "topk": f"blocks/topk_{block:06d}{gen}.npy"}

    def put_block(self, block: int, rows: tuple[int, int], arrays: dict[str, np.ndarray]) -> BlockRecord:
        names = self.block_names(block)
        rec = BlockRecord(block, (int(rows[0]), int(rows[1])))
        for role, arr in arrays.items():
            data = npy_bytes(arr)
            objstore.write_bytes(self.path(names[role]), data, self.storage_options)
            rec.files[role], rec.checksums[role] = names[role], checksum(data)
        return rec

    def record(self, rec: BlockRecord, write: bool = True) -> None:
        """Keep the block in the manifest; saved now (progress for --resume) unless ``write`` is False (an
        incremental run: its one manifest write at the end is the commit)."""
        entry = rec.to_dict()
        entry["file"] = entry["files"]["bias"]
        if "topk" in entry["files"]:
            entry["topk_file"] = entry["files"]["topk"]
        entry["finished"] = time.time()
        self.manifest["blocks_done"][str(rec.block)] = entry
        self._written += list(rec.files.values())
        if write:
            self._write_manifest()

    def remove(self, rels: list[str]) -> None:
        """Best effort: files a committed manifest no longer names (a reader holding the previous one may
        still need them for a moment)."""
        fs, _ = objstore.url_fs(self.url, self.storage_options)
        for rel in rels:
            with contextlib.suppress(Exception):
                fs.rm(objstore.url_fs(self.path(rel), self.storage_options)[1])

    def save_extra(self, name: str, data: bytes) -> None:
        """A file of the run beside the blocks (an index), with its checksum kept by the caller."""
        objstore.write_bytes(self.path(name), data, self.storage_options)
        self._written.append(name)

    def load_extra(self, name: str) -> bytes | None:
        url = self.path(name)
        if not objstore.exists(url, self.storage_options):
            return None
        return objstore.read_bytes(url, self.storage_options)

    def _write_manifest(self) -> None:
        self.manifest["updated"] = time.time()
        objstore.write_json(self._manifest_url(), self.manifest, self.storage_options)

    def commit(self, attrs: dict) -> None:
        self.manifest.update(attrs)
        self.manifest["complete"] = True
        self._write_manifest()

    def abort(self) -> None:
        """Remove what this run wrote, when it started the folder (a resumed run keeps the earlier blocks)."""
        if not self._fresh:
            return
        fs, _ = objstore.url_fs(self.url, self.storage_options)
        named = [name for b in range(getattr(self, "_planned", 0)) for name in self.block_names(b).values()]
        for rel in named + ["index.faiss", MANIFEST]:  # block files a task may have written after the error
            with contextlib.suppress(Exception):
                fs.rm(objstore.url_fs(self.path(rel), self.storage_options)[1])
        with contextlib.suppress(Exception):
            if objstore.is_local(fs):
                for sub in (Path(self.url) / "blocks", Path(self.url)):
                    if sub.is_dir() and not any(sub.iterdir()):
                        sub.rmdir()

    # -- reading -------------------------------------------------------------
    def verify_block(self, block: int, rec: dict, role: str = "bias") -> BlockRecord:
        """The block's record, after checking its file(s): inside the folder, checksum, shape, finite values."""
        try:
            rows = (int(rec["rows"][0]), int(rec["rows"][1]))
            files = dict(rec.get("files") or {"bias": rec["file"]})
        except (KeyError, TypeError, ValueError, IndexError):
            raise InputError(
                f"{self.url}/{MANIFEST}: block {block} has no readable record; the manifest is damaged"
            ) from None
        sums = dict(rec.get("checksums") or {})
        out = BlockRecord(block, rows, files, sums, dict(rec.get("inputs") or {}))
        self.read_block(out, role)
        return out

    def read_block(self, rec: BlockRecord, role: str, k: int | None = None) -> np.ndarray:
        rel = rec.files.get(role)
        if rel is None:
            raise InputError(f"{self.url}/{MANIFEST}: block {rec.block} records no {role} file")
        url = self.path(rel)
        try:
            data = objstore.bounded(lambda: objstore.read_bytes(url, self.storage_options), url)
        except InputError:
            raise InputError(f"{url}: missing or unreadable (block {rec.block} of {self.url})") from None
        if rec.checksums.get(role) != checksum(data):
            raise InputError(f"{url}: checksum differs from the manifest's (edited or truncated); recompute the run")
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{url}: not a readable .npy ({str(exc)[:100]})") from None
        n = rec.rows[1] - rec.rows[0]
        want = (n,) if role == "bias" else (n, k if k is not None else arr.shape[-1])
        if arr.shape != want or arr.dtype != np.float32:
            raise InputError(f"{url}: holds {arr.dtype} {arr.shape}, expected float32 {want}")
        if not np.isfinite(arr).all():
            raise InputError(f"{url}: contains NaN or Inf; the run is damaged, recompute it")
        return arr

    @contextlib.contextmanager
    def lock(self, wait: float) -> Iterator[None]:
        """The exclusive lock of a local run folder (object stores have none: writers there are not serialized)."""
        fs, path = objstore.url_fs(self.url, self.storage_options)
        if not objstore.is_local(fs):
            yield None
            return
        from nnn_cli.data.locks import exclusive_lock

        with exclusive_lock(os.path.join(path, MANIFEST), wait, "bias run folder"):
            yield None


def _comparable(x):
    import json

    return json.loads(json.dumps(x, sort_keys=True))


def _check_same_parts(old: dict, header: dict, role: str, url: str, hashes: bool = True) -> None:
    """Refuse a resume whose ``role`` input differs in shape, or (``hashes``) in content, from the run's."""
    was, now = old["inputs"].get(role, {}).get("parts", []), header["inputs"][role]["parts"]
    shapes = [(p.get("rows"), p.get("dim"), p.get("dtype")) for p in was]
    if shapes != [(p["rows"], p["dim"], p["dtype"]) for p in now]:
        raise MismatchError(
            f"{url}: cannot resume: the {role} is not the one the run was started with (shape or dtype)"
        )
    if not hashes:
        return
    for p_old, p_new in zip(was, now):
        for i, (a, b) in enumerate(zip(p_old.get("fingerprints", []), p_new["fingerprints"])):
            if a != b:
                step = int(p_new["partition_rows"])
                raise MismatchError(
                    f"{url}: cannot resume: {role} rows {i * step}..{min(p_new['rows'], (i + 1) * step) - 1} of "
                    f"{p_new['path']} changed since the run began; start a new output folder"
                )


def open_run(spec: str | os.PathLike, storage_options: dict | None = None) -> tuple[RunFolderSink, dict]:
    """A finished run folder and its manifest (refused when unfinished)."""
    sink = RunFolderSink(str(spec), dict(storage_options or {}))
    if not sink.exists():
        raise InputError(f"{spec}: no {MANIFEST} there; give a bias file (.h5/.npy) or a run folder of `nnn bias`")
    m = sink.read_manifest()
    missing = missing_blocks(m)
    if missing or not m.get("complete", False):
        raise InputError(
            f"{spec}: unfinished: {len(missing)} of {m['plan'].get('blocks')} blocks not done"
            + (f" (first: {missing[0]})" if missing else "")
            + "; finish it with --resume"
        )
    sink.manifest, sink.generation = m, int(m.get("generation", 0))
    return sink, m


def missing_blocks(m: dict) -> list[int]:
    """The blocks of a manifest's plan that are not done yet (an unfinished run)."""
    try:
        n = int(m["plan"]["blocks"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{MANIFEST}: has no readable plan; the manifest is damaged") from None
    return [b for b in range(n) if str(b) not in m["blocks_done"]]


def read_run_bias(spec: str | os.PathLike, storage_options: dict | None = None, with_topk: bool = False) -> BiasFile:
    """A finished run folder as one bias (N,) float32 :class:`BiasFile`, every block verified; its attrs
    carry the same provenance names as a bias file (``gallery_parts`` one per block, with its content hash),
    so the stale-bias guard works the same; ``with_topk`` also loads ``attrs['topk']`` (N, k)."""
    sink, m = open_run(spec, storage_options)
    k = int(m["params"].get("k", 0)) or None
    bias, topk, start = [], [], 0
    for b in range(int(m["plan"]["blocks"])):
        rec = sink.verify_block(b, m["blocks_done"][str(b)])
        if rec.rows[0] != start:
            raise InputError(f"{spec}/{MANIFEST}: block {b} starts at row {rec.rows[0]}, expected {start}; damaged")
        bias.append(sink.read_block(rec, "bias"))
        if with_topk:
            topk.append(sink.read_block(rec, "topk", k))
        start = rec.rows[1]
    arr = np.concatenate(bias).astype(np.float32, copy=False)
    attrs = run_attrs(m, len(arr))
    if with_topk:
        attrs["topk"] = np.vstack(topk)
    return BiasFile(arr, attrs, None)


def run_attrs(m: dict, n: int) -> dict:
    """Bias-file style attributes of a run: params, ``engine``, and the gallery/reference as parts whose
    fingerprints are the content hashes of each block's rows (what :func:`check_matches_parts` checks)."""
    from nnn_cli.data.provenance import parts_attrs

    attrs = {key: v for key, v in m["params"].items() if key != "index"}
    attrs.update(engine=m.get("engine", "ray"), n=int(n), run_format=FORMAT)
    index = m["params"].get("index")
    if isinstance(index, dict):  # made through an index: the options asked for, flattened
        attrs.update(
            {"index": index.get("index")},
            **{f"index_{k}": v for k, v in index.items() if k != "index" and v is not None},
        )
    blocks = [m["blocks_done"][str(b)] for b in range(int(m["plan"]["blocks"]))]
    dtype = str(np.dtype(m["inputs"]["gallery"]["parts"][0]["dtype"]))
    g_parts = [
        {
            "path": f"rows {r['rows'][0]}..{r['rows'][1] - 1}",
            "rows": r["rows"][1] - r["rows"][0],
            "dtype": dtype,
            "fingerprint": r.get("inputs", {}).get("gallery", ""),
        }
        for r in blocks
    ]
    dim = int(m["inputs"]["gallery"]["parts"][0]["dim"])
    if all(p["fingerprint"] for p in g_parts):
        attrs.update(parts_attrs("gallery", g_parts, dim))
        attrs["gallery_path"] = " + ".join(p["path"] for p in m["inputs"]["gallery"]["parts"])
    for role in ("gallery", "reference"):
        parts = m["inputs"][role]["parts"]
        attrs[f"n_{role}"] = sum(int(p["rows"]) for p in parts)
        if len(parts) > 1:
            attrs[f"{role}_parts_added"] = len(parts) - 1
    return attrs


# ---------------------------------------------------------------------------
# Bias files
# ---------------------------------------------------------------------------
@dataclass
class BiasFileSink:
    """A bias file (``.h5``/``.npy``) as a sink: blocks gathered on the driver, written once atomically."""

    output: str
    inputs: list = field(default_factory=list)  # input specs it must not overwrite
    ids: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)  # written with the file
    provenance: Callable[[], dict] | None = None  # called at commit (input fingerprints: free after a full read)
    datasets: Callable[[], dict] | None = None  # extra arrays written with the file (the reference's leak sketch)
    remote_writes: bool = False
    _bias: np.ndarray | None = field(default=None, repr=False)
    _topk: np.ndarray | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return self.output

    @property
    def records_extra(self) -> bool:
        """Whether the file keeps what goes beside the bias (attributes, top-k, the leak sketch): HDF5 does,
        a ``.npy`` holds the bias alone, so nothing is computed for it only to be dropped."""
        return not str(self.output).lower().endswith(".npy")

    def check(self, resume: bool) -> None:
        if resume:
            raise ParameterError(f"{self.output}: --resume applies to run folders; a bias file is written whole")
        check_output_path(self.output, self.inputs, BIAS_SUFFIXES, "bias output")
        return None

    def kept_blocks(self, old, header: dict, block_inputs: dict) -> dict[int, BlockRecord]:
        return {}

    def allocate(self, n: int, k: int | None) -> None:
        self._bias = np.empty(n, dtype=np.float32)
        self._topk = np.empty((n, k), dtype=np.float32) if k else None

    def put_block(self, block: int, rows: tuple[int, int], arrays: dict[str, np.ndarray]) -> BlockRecord:
        g0, g1 = rows
        assert self._bias is not None
        self._bias[g0:g1] = arrays["bias"]
        if self._topk is not None and "topk" in arrays:
            self._topk[g0:g1] = arrays["topk"]
        return BlockRecord(block, (g0, g1))

    def record(self, rec: BlockRecord) -> None:
        pass

    def commit(self, attrs: dict) -> None:
        assert self._bias is not None
        # the provenance (input fingerprints: a pass of its own for an input no full pass hashed) runs
        # beside the extra datasets (the leak sketch), whose GEMMs leave a core idle at times
        provenance = started(self.provenance) if self.provenance else None
        extra = {"topk": self._topk} if self._topk is not None else {}
        extra.update(self.datasets() if self.datasets else {})
        merged = {
            **(provenance() if provenance else {}),
            **self.attrs,
            **{key: v for key, v in attrs.items() if v is not None and not isinstance(v, dict)},
        }
        write_bias(self.output, self._bias, merged, ids=self.ids, extra=extra)

    def abort(self) -> None:
        pass

    def save_extra(self, name: str, data: bytes) -> None:
        pass  # a bias file is not resumed: nothing beside it is kept

    def load_extra(self, name: str) -> bytes | None:
        return None

    @property
    def bias(self) -> np.ndarray:
        assert self._bias is not None
        return self._bias


__all__ = [
    "BiasFileSink",
    "FORMAT",
    "MANIFEST",
    "RunFolderSink",
    "is_run_target",
    "missing_blocks",
    "open_run",
    "read_run_bias",
    "run_attrs",
]
