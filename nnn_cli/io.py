"""File I/O: embedding files, ground truth, parameter files and atomic outputs.

Embedding files are HDF5 (dataset ``embeddings``, optional ``ids``; another
dataset with ``FILE.h5:DATASET``) or ``.npy`` (2-D, row number = id).
Inputs are opened lazily and read in row blocks, each block checked (finite,
non-zero) and converted to float32; outputs are written to a temporary file in
the destination folder, fsynced and renamed, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InputError, MismatchError, ParameterError
from .signals import raise_if_interrupted

H5_SUFFIXES = (".h5", ".hdf5", ".he5")
METRICS = ("cosine", "ip")
DEFAULT_BLOCK_ROWS = 16384


def _h5py():
    import h5py

    return h5py


def is_h5_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(H5_SUFFIXES)


def split_spec(spec: str | os.PathLike, default_dataset: str = "embeddings") -> tuple[Path, str]:
    """Split ``FILE.h5:DATASET`` into (path, dataset); plain paths get ``default_dataset``."""
    text = str(spec)
    if not os.path.exists(text) and ":" in text:
        head, _, tail = text.rpartition(":")
        if is_h5_path(head) and tail:
            return Path(head), tail
    return Path(text), default_dataset


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    return metric


def _open_h5(path: Path, what: str = "file"):
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected an HDF5 {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({_short(exc)})") from None


def open_h5_safe(path: Path, what: str = "file"):
    """Open an HDF5 file for reading, refusing links to data outside it (see :func:`check_h5_self_contained`)."""
    f = _open_h5(path, what)
    try:
        check_h5_self_contained(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_h5_self_contained(f, path: str | os.PathLike) -> None:
    """Refuse an HDF5 file whose datasets read from other files.

    External links, virtual datasets with sources in another file and
    datasets with external raw storage would let an untrusted file make us
    read any path on this machine; they are refused with :class:`InputError`.
    """
    h5py = _h5py()
    problems: list[str] = []

    def visit(name: str) -> None:
        link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{name!r} is an external link to {link.filename}:{link.path}")
            return
        if isinstance(link, h5py.SoftLink):
            return
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                outside = sorted({m.file_name for m in obj.virtual_sources() if m.file_name != "."})
                if outside:
                    problems.append(f"{name!r} is a virtual dataset reading {', '.join(outside)}")
            if obj.external:
                problems.append(f"{name!r} stores its data in external file {obj.external[0][0]}")

    f.visit_links(visit)
    if problems:
        raise InputError(f"{path}: {problems[0]}; refusing to follow data outside the file "
                         "(copy the data into the file, e.g. with h5copy or h5py)")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _decode_strings(values) -> np.ndarray:
    out = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    return np.asarray(out, dtype=object)


@dataclass
class EmbeddingSource:
    """A lazily opened (N, d) embedding matrix, read in validated float32 blocks.

    Use :func:`open_embeddings` to make one.  ``read()`` loads everything;
    ``iter_blocks()`` streams; both L2-normalise rows when ``metric='cosine'``.
    """

    path: Path
    dataset: str | None
    kind: str  # "h5" | "npy"
    shape: tuple[int, int]
    dtype: np.dtype
    label: str = "embeddings"
    _ids: np.ndarray | None = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)
    _array: np.ndarray | None = field(default=None, repr=False)  # kind "mem" (read from stdin)

    @property
    def n(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    @property
    def name(self) -> str:
        if self.kind == "mem":
            return "<stdin>"
        return f"{self.path}:{self.dataset}" if self.kind == "h5" else str(self.path)

    # -- raw access -------------------------------------------------------
    @contextlib.contextmanager
    def _raw(self):
        if self.kind == "h5":
            with open_h5_safe(self.path) as f:
                yield f[self.dataset]
        elif self.kind == "mem":
            yield self._array
        else:
            from .shards import NpyRows  # block reads, not a memory map: RSS stays at one block

            with NpyRows(self.path) as rows:
                yield rows

    def ids(self) -> np.ndarray | None:
        """Row ids (object array of str) or None when the file has none."""
        return self._ids

    # -- validated reads --------------------------------------------------
    def iter_blocks(
        self, metric: str = "cosine", block_rows: int = DEFAULT_BLOCK_ROWS
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, block)`` with ``block`` float32 (rows, d), checked and normalised."""
        check_metric(metric)
        # the content hash comes free with the first full pass; later passes skip it
        hasher = _fingerprint_hasher(self.shape, self.dtype) if self._fingerprint is None else None
        block_rows = max(1, int(block_rows))
        try:
            with self._raw() as raw:
                for start in range(0, self.n, block_rows):
                    stop = min(self.n, start + block_rows)
                    chunk = np.ascontiguousarray(raw[start:stop])
                    if hasher is not None:
                        hasher.update(chunk.reshape(-1).view(np.uint8))  # the bytes, without a copy
                    block = self._prepare(chunk, start, metric)
                    del chunk  # not held while the caller works on the block (when _prepare copied it)
                    yield start, block
                    del block
        except InputError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{self.name}: cannot read data ({_short(exc)}); the file may be truncated") from None
        if hasher is not None:
            self._fingerprint = hasher.hexdigest()

    def take_rows(self, positions: np.ndarray, metric: str = "cosine",
                  block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
        """Rows at sorted ``positions`` as float32 (len, d), checked and normalised (only those rows).

        One sequential pass over the raw data that keeps just the wanted rows:
        much cheaper than :meth:`iter_blocks` when they are a small sample
        (an index's training set), since nothing else is converted, hashed or
        normalised.
        """
        check_metric(metric)
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        try:
            with self._raw() as raw:
                for start in range(0, self.n, max(1, int(block_rows))):
                    stop = min(self.n, start + max(1, int(block_rows)))
                    lo, hi = np.searchsorted(positions, [start, stop])
                    if hi > lo:
                        picked = np.asarray(raw[start:stop])[positions[lo:hi] - start]
                        out[lo:hi] = self._prepare(picked, start, metric, positions[lo:hi] - start)
        except InputError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{self.name}: cannot read data ({_short(exc)}); the file may be truncated") from None
        return out

    def read(self, metric: str = "cosine", block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
        """The whole matrix as float32 (N, d), checked and normalised."""
        out = np.empty(self.shape, dtype=np.float32)
        for start, block in self.iter_blocks(metric, block_rows):
            out[start : start + len(block)] = block
        return out

    def fingerprint(self) -> str:
        """Content hash of the stored array (shape, dtype, bytes); reads the file once if needed.

        A pass that only hashes (no conversion or checks); a full
        :meth:`iter_blocks` pass records it for free.
        """
        if self._fingerprint is None:
            self._fingerprint = self.fingerprint_rows(0, self.n)
        return self._fingerprint

    def fingerprint_rows(self, start: int, stop: int, block_rows: int = DEFAULT_BLOCK_ROWS) -> str:
        """Content hash of rows ``[start, stop)`` as if they were a file of their own.

        ``fingerprint_rows(0, n) == fingerprint()``; a bias file grown by
        ``--append-to`` records one fingerprint per part, checked this way.
        """
        start, stop = max(0, int(start)), min(self.n, int(stop))
        hasher = _fingerprint_hasher((stop - start, self.dim), self.dtype)
        try:
            with self._raw() as raw:
                for lo in range(start, stop, max(1, int(block_rows))):
                    hi = min(stop, lo + max(1, int(block_rows)))
                    hasher.update(np.ascontiguousarray(raw[lo:hi]).reshape(-1).view(np.uint8))
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{self.name}: cannot read data ({_short(exc)}); the file may be truncated") from None
        return hasher.hexdigest()

    def _prepare(self, chunk: np.ndarray, start: int, metric: str, offsets: np.ndarray | None = None) -> np.ndarray:
        """Check a block (no NaN/Inf, no zero rows) and normalise it for cosine.

        Row ``i`` of ``chunk`` is file row ``start + i``, or ``start + offsets[i]``
        when the chunk holds picked rows (used in error messages).

        One pass computes the squared norms; only when one of them is not a
        positive finite number are the rows looked at in detail (a NaN/Inf
        entry, a zero row, or float32 overflow/underflow of the square).
        """
        block = chunk.astype(np.float32, copy=False)
        squares = np.einsum("ij,ij->i", block, block)
        if np.isfinite(squares).all() and (squares > 0).all():
            norms = np.sqrt(squares)
        else:
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                row = start + _offset(offsets, int(np.argmin(finite)))
                raise InputError(f"{self.name}: row {row} contains NaN or Inf; clean or drop it before running nnn")
            nonzero = (block != 0).any(axis=1)
            if not nonzero.all():
                row = start + _offset(offsets, int(np.argmin(nonzero)))
                raise InputError(f"{self.name}: row {row} is a zero vector; it has no direction to score against")
            norms = np.linalg.norm(block.astype(np.float64), axis=1).astype(np.float32)
        if metric == "cosine":
            block = block / norms[:, None]
        return np.ascontiguousarray(block, dtype=np.float32)


def _offset(offsets: np.ndarray | None, i: int) -> int:
    return i if offsets is None else int(offsets[i])


def _fingerprint_hasher(shape: tuple[int, ...], dtype: np.dtype):
    """The content hash of an embedding array starts from its shape and dtype."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(f"{tuple(int(x) for x in shape)}|{np.dtype(dtype).str}".encode())
    return hasher


STDIN = "-"


def _read_stdin_array(label: str) -> np.ndarray:
    """One array from standard input: ``.npy`` bytes (pickles refused) or an HDF5 file's ``embeddings``."""
    import io as _io

    data = sys.stdin.buffer.read()
    if not data:
        raise InputError(f"<stdin>: no data on standard input (the {label}); pipe a .npy file, e.g. `cat q.npy | nnn ...`")
    if data.startswith(b"\x89HDF\r\n\x1a\n"):
        h5py = _h5py()
        with h5py.File(_io.BytesIO(data), "r") as f:
            check_h5_self_contained(f, "<stdin>")
            if "embeddings" not in f:
                raise InputError("<stdin>: HDF5 data on standard input has no dataset 'embeddings'")
            return f["embeddings"][()]
    if not data.startswith(b"\x93NUMPY"):
        raise InputError("<stdin>: not .npy data (no NumPy header); pipe a file written by numpy.save")
    try:
        arr = np.load(_io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        msg = _short(exc)
        if "allow_pickle" in msg or "object" in msg.lower():
            raise InputError("<stdin>: holds Python objects (pickles are refused); save a numeric array") from None
        raise InputError(f"<stdin>: not .npy data ({msg}); pipe a file written by numpy.save") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"<stdin>: not .npy data ({_short(exc)})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError("<stdin>: expected one .npy array, got an .npz archive")
    return arr


def load_npy(path: Path, what: str) -> np.ndarray:
    """A small whole ``.npy`` array (bias, truth, labels), pickles refused; ``what`` names it in errors."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy {what} file ({_short(exc)})") from None


def open_embeddings(spec: str | os.PathLike, label: str = "embeddings") -> EmbeddingSource:
    """Open an embedding file (``.npy``, ``.h5``, ``FILE.h5:DATASET``, or ``-``: .npy bytes on stdin) and check its header.

    A folder is read as ``.npy`` shards in numeric order (``0.npy, 1.npy, ...``;
    see :mod:`nnn_cli.shards`), streamed like one file.

    Raises :class:`InputError` naming the file for: missing file, unreadable
    format, missing dataset, not 2-D, empty, non-float dtype.
    """
    path, dataset = split_spec(spec)
    if str(spec) == STDIN:
        arr = _read_stdin_array(label)
        src = EmbeddingSource(Path(STDIN), None, "mem", tuple(arr.shape), arr.dtype, label, _array=arr)
        ids = None
    elif not path.exists():
        raise InputError(f"{path}: no such file (the {label})")
    elif path.is_dir():
        from .shards import open_shard_folder  # a folder of .npy shards: 0.npy, 1.npy, ...

        src = open_shard_folder(path, label)
        ids = src.ids()
    elif path.suffix.lower() == ".npy":
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise InputError(f"{path}: not a .npy file (no NumPy header); write it with numpy.save")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            msg = _short(exc)
            if "allow_pickle" in msg or "object" in msg.lower():
                raise InputError(f"{path}: holds Python objects (pickles are refused); save a numeric array") from None
            raise InputError(f"{path}: not a readable .npy file ({msg}); it may be truncated") from None
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: not a readable .npy file ({_short(exc)})") from None
        if not isinstance(arr, np.ndarray):
            raise InputError(f"{path}: not a .npy array")
        src = EmbeddingSource(path, None, "npy", tuple(arr.shape), arr.dtype, label)
        ids = None
    elif is_h5_path(path):
        with open_h5_safe(path) as f:
            if dataset not in f:
                have = ", ".join(sorted(k for k in f.keys())) or "nothing"
                raise InputError(f"{path}: no dataset {dataset!r} (the file has: {have}); name one with {path}:DATASET")
            dset = f[dataset]
            if not hasattr(dset, "shape"):
                raise InputError(f"{path}:{dataset} is a group, not a dataset")
            src = EmbeddingSource(path, dataset, "h5", tuple(dset.shape), dset.dtype, label)
            ids = None
            if "ids" in f and dataset != "ids":
                raw_ids = f["ids"]
                if raw_ids.shape != (src.shape[0] if len(src.shape) else -1,):
                    raise MismatchError(
                        f"{path}: dataset 'ids' has shape {raw_ids.shape} but {dataset!r} has {src.shape[0] if src.shape else 0} rows"
                    )
                ids = _decode_strings(raw_ids[()])
    else:
        raise InputError(f"{path}: unknown file type {path.suffix or '(none)'!r}; use .h5/.hdf5 or .npy")
    if len(src.shape) != 2:
        raise InputError(f"{src.name}: expected a 2-D array (N, d), got shape {src.shape}")
    if src.shape[0] == 0 or src.shape[1] == 0:
        raise InputError(f"{src.name}: empty array of shape {src.shape}")
    if src.dtype.kind != "f":
        raise InputError(f"{src.name}: dtype {src.dtype} is not floating point; store float16 or float32")
    src._ids = ids
    return src


def check_same_dim(*sources: EmbeddingSource) -> None:
    """Raise :class:`MismatchError` unless all sources share one dimension."""
    dims = {s.dim for s in sources}
    if len(dims) > 1:
        desc = ", ".join(f"{s.label} {s.name} has d={s.dim}" for s in sources)
        raise MismatchError(f"dimension mismatch: {desc}")


# ---------------------------------------------------------------------------
# Bias files
# ---------------------------------------------------------------------------
@dataclass
class BiasFile:
    bias: np.ndarray  # (N,) float32
    attrs: dict
    ids: np.ndarray | None = None


def read_bias(spec: str | os.PathLike) -> BiasFile:
    """Read a bias file written by ``nnn bias`` (HDF5 dataset ``bias`` or a 1-D ``.npy``)."""
    path, dataset = split_spec(spec, "bias")
    if not path.exists():
        raise InputError(f"{path}: no such file (the bias)")
    if path.suffix.lower() == ".npy":
        arr = load_npy(path, "bias")
        attrs: dict = {}
        ids = None
    elif is_h5_path(path):
        with open_h5_safe(path, "bias file") as f:
            if dataset not in f:
                raise InputError(f"{path}: no dataset {dataset!r}; is this a bias file made by `nnn bias`?")
            try:
                arr = f[dataset][()]
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: cannot read {dataset!r} ({_short(exc)})") from None
            attrs = {k: attr_value(v) for k, v in f.attrs.items()}
            ids = _decode_strings(f["ids"][()]) if "ids" in f else None
    else:
        raise InputError(f"{path}: unknown bias file type; use .h5 or .npy")
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise InputError(f"{path}: bias must be 1-D (N,), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{path}: bias dtype {arr.dtype} is not numeric")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: bias contains NaN or Inf")
    return BiasFile(arr, attrs, ids)


def attr_value(v):
    """An HDF5 attribute as a plain Python value (str, int, float, list) for JSON and comparisons."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def write_bias(path: str | os.PathLike, bias: np.ndarray, attrs: dict, ids: np.ndarray | None = None,
               extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``bias`` (N,) float32 atomically to HDF5 (with attributes, ids, extra datasets) or ``.npy``."""
    path = Path(path)
    bias = np.asarray(bias, dtype=np.float32)
    if path.suffix.lower() == ".npy":
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, bias)
        return path
    if not is_h5_path(path):
        raise ParameterError(f"{path}: output must end in .h5, .hdf5 or .npy")
    h5py = _h5py()
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("bias", data=bias)
            if ids is not None:
                f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
            for name, arr in (extra or {}).items():
                f.create_dataset(name, data=arr)
            _set_attrs(f, attrs)
    return path


def _set_attrs(obj, attrs: dict) -> None:
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)) and value and all(
                isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value):
            value = np.asarray(value)  # shapes and other number lists stay numeric
        elif isinstance(value, (dict, list, tuple)):
            value = json.dumps(value)
        obj.attrs[key] = value


# ---------------------------------------------------------------------------
# Search results
# ---------------------------------------------------------------------------
def write_results(path: str | os.PathLike, indices: np.ndarray, scores: np.ndarray,
                  ids: np.ndarray | None, attrs: dict) -> Path:
    """Write search results (``indices``, ``scores``, optional ``ids``) atomically to HDF5 or ``.npz``."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                arrays = {"indices": indices.astype(np.int64), "scores": scores.astype(np.float32)}
                if ids is not None:
                    arrays["ids"] = np.asarray(ids, dtype=str)
                np.savez(fh, **arrays)
        return path
    if not is_h5_path(path):
        raise ParameterError(f"{path}: output must end in .h5/.hdf5 or .npz (or use -o - for JSON lines)")
    h5py = _h5py()
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("indices", data=indices.astype(np.int64))
            f.create_dataset("scores", data=scores.astype(np.float32))
            if ids is not None:
                f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
            _set_attrs(f, attrs)
    return path


# ---------------------------------------------------------------------------
# Atomic outputs
# ---------------------------------------------------------------------------
def _hold_signals():
    """Hold SIGINT/SIGTERM back (POSIX, main thread); returns the mask to restore, or None."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _release_signals(held) -> None:
    """Deliver what :func:`_hold_signals` held back."""
    if held is not None:
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched,
    so a reader sees either the previous complete file or the new complete file.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: output folder {parent} does not exist")
    tmp: Path | None = None
    held = _hold_signals()  # a signal between mkstemp and `tmp = ...` would leave the temporary file behind
    try:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            tmp = Path(tmp_name)
        except PermissionError:
            raise InputError(f"{path}: cannot create files in {parent} (permission denied)") from None
        finally:
            _release_signals(held)  # a signal held back is raised here, inside the cleanup's reach
        yield tmp
        raise_if_interrupted()  # a Ctrl-C/SIGTERM swallowed while writing must not publish the file
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            dfd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike | None]) -> Path:
    """Refuse an output path that is one of the inputs or whose folder is missing."""
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ParameterError(f"{out}: output folder {parent} does not exist")
    if out.is_dir():
        raise ParameterError(f"{out}: is a directory; give a file name for the output")
    for spec in inputs:
        if spec is None:
            continue
        in_path, _ = split_spec(spec)
        try:
            if in_path.exists() and out.exists() and os.path.samefile(in_path, out):
                raise ParameterError(f"{out}: is also an input; refusing to overwrite it")
        except OSError:
            continue
    return out


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------
@dataclass
class Truth:
    """Correct (query, gallery) pairs; a query may have several correct gallery items."""

    query: np.ndarray  # (P,) int64
    gallery: np.ndarray  # (P,) int64
    n_queries: int

    @classmethod
    def from_array(cls, arr: np.ndarray, n_queries: int, n_gallery: int, name: str = "truth") -> "Truth":
        arr = np.asarray(arr)
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise InputError(f"{name}: ground truth must hold integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.ndim == 1:
            if len(arr) != n_queries:
                raise MismatchError(f"{name}: has {len(arr)} entries but there are {n_queries} queries")
            q = np.arange(n_queries, dtype=np.int64)
            g = arr
        elif arr.ndim == 2 and arr.shape[1] == 2:
            q, g = arr[:, 0], arr[:, 1]
            if len(q) == 0:
                raise InputError(f"{name}: no (query, gallery) pairs")
            if q.min() < 0 or q.max() >= n_queries:
                raise InputError(f"{name}: query row {int(q.max() if q.max() >= n_queries else q.min())} out of range [0, {n_queries})")
        else:
            raise InputError(f"{name}: expected shape (Q,) or (P, 2), got {arr.shape}")
        if len(g) and (g.min() < 0 or g.max() >= n_gallery):
            bad = int(g.max() if g.max() >= n_gallery else g.min())
            raise InputError(f"{name}: gallery row {bad} out of range [0, {n_gallery})")
        return cls(q, g, n_queries)

    def has_truth(self) -> np.ndarray:
        """(Q,) bool: queries with at least one correct item (the recall denominator)."""
        out = np.zeros(self.n_queries, dtype=bool)
        out[self.query] = True
        return out

    def first_hit_rank(self, topk: np.ndarray) -> np.ndarray:
        """(Q,) 0-based rank of the first correct item in each row of ``topk``; K if none is there."""
        topk = np.asarray(topk)
        k = topk.shape[1]
        match = topk[self.query] == self.gallery[:, None]  # (P, K)
        pos = np.where(match.any(axis=1), match.argmax(axis=1), k)
        best = np.full(self.n_queries, k, dtype=np.int64)
        np.minimum.at(best, self.query, pos)
        return best


def read_truth(spec: str | os.PathLike, n_queries: int, n_gallery: int,
               query_ids: np.ndarray | None = None, gallery_ids: np.ndarray | None = None) -> Truth:
    """Read ground truth from ``.npy``, ``.h5`` (dataset ``truth``) or ``.csv``/``.tsv`` of ids."""
    path, dataset = split_spec(spec, "truth")
    if not path.exists():
        raise InputError(f"{path}: no such file (the ground truth)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = load_npy(path, "ground-truth")
    elif is_h5_path(path):
        with open_h5_safe(path, "ground-truth file") as f:
            if dataset not in f:
                raise InputError(f"{path}: no dataset {dataset!r}")
            arr = f[dataset][()]
    elif suffix in (".csv", ".tsv"):
        return _read_truth_table(path, n_queries, n_gallery, query_ids, gallery_ids)
    else:
        raise InputError(f"{path}: unknown ground-truth file type; use .npy, .h5 or .csv/.tsv")
    return Truth.from_array(arr, n_queries, n_gallery, str(path))


def _read_truth_table(path: Path, n_queries: int, n_gallery: int,
                      query_ids: np.ndarray | None, gallery_ids: np.ndarray | None) -> Truth:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if not reader.fieldnames or not {"query", "gallery"} <= set(reader.fieldnames):
            raise InputError(f"{path}: needs a header with columns 'query' and 'gallery'")
        rows = [(r["query"], r["gallery"]) for r in reader]
    if not rows:
        raise InputError(f"{path}: no (query, gallery) rows")

    def lookup(values, ids, n, side):
        if ids is None:
            try:
                return np.asarray([int(v) for v in values], dtype=np.int64)
            except ValueError:
                raise InputError(f"{path}: the {side} file has no ids, so {side} values must be row numbers") from None
        table = {str(v): i for i, v in enumerate(ids)}
        missing = [v for v in values if v not in table]
        if missing:
            raise InputError(f"{path}: unknown {side} id {missing[0]!r} ({len(missing)} unknown in all)")
        return np.asarray([table[v] for v in values], dtype=np.int64)

    q = lookup([r[0] for r in rows], query_ids, n_queries, "query")
    g = lookup([r[1] for r in rows], gallery_ids, n_gallery, "gallery")
    return Truth.from_array(np.stack([q, g], axis=1), n_queries, n_gallery, str(path))


# ---------------------------------------------------------------------------
# Parameter files (written by `nnn tune`)
# ---------------------------------------------------------------------------
def read_params(path: str | os.PathLike) -> dict:
    """Read a params JSON file with at least ``alpha`` and ``k``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (the params)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({_short(exc)})") from None
    if not isinstance(data, dict) or "alpha" not in data or "k" not in data:
        raise InputError(f"{path}: expected a JSON object with 'alpha' and 'k' (as written by `nnn tune`)")
    try:
        alpha = float(data["alpha"])
        k = int(data["k"])
    except (TypeError, ValueError):
        raise InputError(f"{path}: 'alpha' must be a number and 'k' an integer") from None
    return {**data, "alpha": alpha, "k": k}


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    """Write a JSON document atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return path
