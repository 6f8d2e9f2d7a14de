"""Inputs and outputs by URL through fsspec (``file://``, ``s3://``, ``gs://``, ``hdfs://``, plain paths).

Embeddings on an object store are read the way clip-retrieval / autofaiss write them: a folder of
``.npy`` shards (``0.npy, 1.npy, ...``) or one ``.npy``.  Only the header of each shard is fetched to
learn its shape, then rows are fetched as byte ranges (``fs.cat_file(path, start, end)``): a task that
needs rows ``[a, b)`` transfers ``(b - a) * d * itemsize`` bytes, never the whole file.

:class:`UrlSource` is an :class:`nnn_cli.data.sources.EmbeddingSource`, so ``iter_blocks`` / ``read`` /
``take_rows`` check and normalise rows exactly as the local readers do (same ``_prepare``), which keeps
the distributed engine byte-identical to the local one.

Outputs (per-block ``.npy`` files, ``manifest.json``) are committed whole: a temporary file plus
``os.replace`` on a local file system, a single PUT on object stores (which is atomic per object).

fsspec and the protocol's driver (s3fs, gcsfs, ...) are optional dependencies: ``pip install 'nnn-cli[ray]'``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.errors import DependencyError, InputError, NNNError, ParameterError

T = TypeVar("T")

HEADER_PROBE = 4096
"""Bytes fetched to parse a ``.npy`` header (a v1/v2 header is almost always shorter; refetched if not)."""

_NUMBERED = re.compile(r"^(.*?)(\d+)$")
ID_FILES = ("ids.npy",)


DEFAULT_IO_TIMEOUT = 30.0
"""Seconds an object store may take to answer one request before the run stops (``--io-timeout``)."""

IO_TIMEOUT_ENV = "NNN_IO_TIMEOUT"
_IO_TIMEOUT: list[float] = []  # set by set_io_timeout (the run's --io-timeout), else the env or the default

VOLATILE_SCHEMES = ("memory",)
"""Schemes whose data lives in this process only: refused as outputs (they would vanish when nnn exits)."""


def _fsspec():
    try:
        import fsspec
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise DependencyError(
            "run folders and URL inputs/outputs need fsspec: pip install fsspec (or 'nnn-cli[ray]')"
        ) from None
    return fsspec


def check_io_timeout(seconds: float | str, what: str = "--io-timeout") -> float:
    """A positive, finite number of seconds (raises :class:`ParameterError` naming ``what``)."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be a number of seconds, got {seconds!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ParameterError(f"{what} must be a positive number of seconds, got {seconds!r}")
    return value


def set_io_timeout(seconds: float | None) -> None:
    """The run's I/O timeout (None: back to ``NNN_IO_TIMEOUT`` or the default of 30 s)."""
    _IO_TIMEOUT.clear()
    if seconds is not None:
        _IO_TIMEOUT.append(check_io_timeout(seconds))


def io_timeout() -> float:
    """Seconds one request to a store may take: :func:`set_io_timeout`, else ``NNN_IO_TIMEOUT``, else 30."""
    if _IO_TIMEOUT:
        return _IO_TIMEOUT[0]
    env = os.environ.get(IO_TIMEOUT_ENV)
    return check_io_timeout(env, IO_TIMEOUT_ENV) if env else DEFAULT_IO_TIMEOUT


def is_url(spec: str | os.PathLike) -> bool:
    return "://" in str(spec)


def scheme(url: str | os.PathLike) -> str:
    """``s3`` for ``s3://b/x``; ``file`` for a plain path."""
    text = str(url)
    return text.split("://", 1)[0].lower() if is_url(text) else "file"


def url_error(url: str, exc: BaseException) -> NNNError:
    """One line naming ``url`` for what went wrong reaching it (exit 2)."""
    if isinstance(exc, NNNError):
        return exc
    text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    name = type(exc).__name__
    if isinstance(exc, ImportError):
        return DependencyError(f"{url}: the {scheme(url)}:// driver is not installed ({text})")
    if "Protocol not known" in text or "not known" in text and "rotocol" in text:
        return InputError(f"{url}: unknown URL scheme {scheme(url)!r}")
    if "Credentials" in name or "credentials" in text.lower():
        return InputError(f"{url}: no credentials for {scheme(url)}:// ({text})")
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{url}: no such file or folder")
    if isinstance(exc, PermissionError):
        return InputError(f"{url}: access denied ({text})")
    return InputError(f"{url}: cannot reach it ({name}: {text})")


def bounded(fn: Callable[[], T], url: str, seconds: float | None = None) -> T:
    """``fn()`` (one or a few requests to the store behind ``url``), given at most ``seconds`` (default
    :func:`io_timeout`); a silent endpoint or any error becomes one line naming ``url`` (exit 2)."""
    limit = io_timeout() if seconds is None else seconds
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="nnn-io", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        raise InputError(f"{url}: no answer within {limit:g} s (set --io-timeout or {IO_TIMEOUT_ENV})")
    if "error" in box:
        raise url_error(url, box["error"]) from None
    return box["value"]


def _timeouts(protocol: str, storage_options: dict) -> dict:
    """Storage options with the store client's own timeouts set from :func:`io_timeout` (S3: botocore)."""
    if protocol in ("s3", "s3a") and "config_kwargs" not in storage_options:
        limit = io_timeout()
        config = {"connect_timeout": limit, "read_timeout": limit, "retries": {"max_attempts": 2}}
        return {**storage_options, "config_kwargs": config}
    return storage_options


def url_fs(url: str | os.PathLike, storage_options: dict | None = None):
    """``(filesystem, path)`` for a URL or a plain path; an unknown scheme or missing driver is one line."""
    text = str(url)
    try:
        return _fsspec().core.url_to_fs(text, **_timeouts(scheme(text), dict(storage_options or {})))
    except (ValueError, ImportError, TypeError) as exc:
        raise url_error(text, exc) from None


def check_output_url(url: str, storage_options: dict | None = None, what: str = "output") -> None:
    """Refuse an output URL that cannot hold data beyond this process, or whose store cannot be reached."""
    if scheme(url) in VOLATILE_SCHEMES:
        raise ParameterError(
            f"{url}: {scheme(url)}:// lives in this process's memory and would vanish when nnn exits; "
            f"give a folder or a persistent URL (s3://, gs://, file://) for the {what}"
        )
    fs, path = url_fs(url, storage_options)
    if not is_local(fs):
        parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else path
        bounded(lambda: fs.exists(parent) or fs.ls(parent.split("/", 1)[0], detail=False), url)


def join(url: str, *parts: str) -> str:
    """``url/part/...`` (URLs always use ``/``)."""
    return "/".join([str(url).rstrip("/")] + [p.strip("/") for p in parts])


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


# ---------------------------------------------------------------------------
# .npy shards by ranged reads
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NpyInfo:
    """Where a C-ordered ``.npy`` keeps its rows: data offset, shape, dtype, file size."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    size: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:])) * np.dtype(self.dtype).itemsize


def npy_info(fs, path: str) -> NpyInfo:
    """Parse the header of the ``.npy`` at ``path`` from its first bytes (one or two small ranged reads)."""
    size = int(fs.size(path))
    head = fs.cat_file(path, start=0, end=min(size, HEADER_PROBE))
    fmt = np.lib.format
    for attempt in range(2):
        buf = io.BytesIO(head)
        try:
            version = fmt.read_magic(buf)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(buf)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(buf) if version == (2, 0) else _read_v3(buf)
            else:
                raise InputError(f"{path}: unsupported .npy version {version}")
            break
        except (ValueError, EOFError) as exc:
            if attempt == 0 and len(head) < size:  # a header longer than the probe: fetch it whole
                head = fs.cat_file(path, start=0, end=min(size, 1 << 20))
                continue
            raise InputError(f"{path}: not a readable .npy file ({str(exc).splitlines()[0][:120]})") from None
    if fortran:
        raise InputError(f"{path}: Fortran-ordered .npy; save it C-ordered (np.ascontiguousarray) for ranged reads")
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise InputError(f"{path}: holds Python objects (pickles are refused); save a numeric array")
    info = NpyInfo(path, buf.tell(), tuple(int(s) for s in shape), dtype.str, size)
    if info.offset + info.shape[0] * info.row_bytes > size:
        raise InputError(f"{path}: file ends early (truncated?)")
    return info


def _read_v3(buf):  # pragma: no cover - numpy writes v3 only for non-latin1 field names
    # a private numpy helper (no public reader for v3 headers), absent from numpy's stubs
    return np.lib.format._read_array_header(buf, version=(3, 0))  # type: ignore[attr-defined]


class RangedRows:
    """Row slices of one ``.npy`` fetched as byte ranges: ``rows[a:b]`` reads only those rows."""

    def __init__(self, fs, info: NpyInfo):
        self.fs, self.info = fs, info
        self.shape, self.dtype = info.shape, np.dtype(info.dtype)
        self.bytes_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("RangedRows supports contiguous row slices only")
        count = max(0, stop - start)
        if count == 0:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        lo = self.info.offset + start * self.info.row_bytes
        data = self.fs.cat_file(self.info.path, start=lo, end=lo + count * self.info.row_bytes)
        if len(data) != count * self.info.row_bytes:
            raise ValueError(f"{self.info.path}: short read (truncated?)")
        self.bytes_read += len(data)
        return np.frombuffer(data, dtype=self.dtype).reshape((count,) + self.shape[1:])

    def close(self) -> None:
        pass


class _ConcatRanged:
    """Rows across shard boundaries (same contract as :class:`nnn_cli.data.shards._ConcatRows`)."""

    def __init__(self, fs, infos: tuple[NpyInfo, ...], offsets: np.ndarray):
        self.parts = [RangedRows(fs, i) for i in infos]
        self.offsets = offsets

    @property
    def bytes_read(self) -> int:
        return sum(p.bytes_read for p in self.parts)

    def close(self) -> None:
        pass

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(int(self.offsets[-1]))
        first = max(0, int(np.searchsorted(self.offsets, start, side="right")) - 1)
        out = []
        for s in range(first, len(self.parts)):
            lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
            if lo >= stop:
                break
            if hi > start:
                out.append(self.parts[s][max(start, lo) - lo : min(stop, hi) - lo])
        if len(out) == 1:
            return out[0]
        return np.concatenate(out, axis=0) if out else np.empty((0, self.parts[0].shape[1]), self.parts[0].dtype)


@dataclass
class UrlSource(EmbeddingSource):
    """An embedding matrix behind a URL (a ``.npy`` shard folder or one ``.npy``), read by byte ranges.

    Picklable (it holds the URL, the shard table and the storage options, not open handles), so the
    Ray engine ships it to tasks and each task reads just its rows.
    """

    url: str = ""
    storage_options: dict = field(default_factory=dict, repr=False)
    infos: tuple[NpyInfo, ...] = field(default=(), repr=False)
    offsets: np.ndarray | None = field(default=None, repr=False)
    bytes_read: int = 0

    @property
    def name(self) -> str:
        return self.url

    @contextlib.contextmanager
    def _raw(self):
        fs, _ = url_fs(self.url, self.storage_options)
        assert self.offsets is not None  # set when the source is opened
        yield _ConcatRanged(fs, self.infos, self.offsets)


def shard_paths(fs, folder: str) -> list[str]:
    """The ``.npy`` shards of ``folder`` in numeric order of the number ending each name."""
    numbered = []
    for p in fs.ls(folder, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if not name.endswith(".npy") or name in ID_FILES:
            continue
        m = _NUMBERED.match(name[:-4])
        if not m:
            raise InputError(f"{folder}: shard {name} has no number at the end of its name")
        numbered.append((m.group(1), int(m.group(2)), p))
    if not numbered:
        raise InputError(f"{folder}: holds no .npy shards (expected 0.npy, 1.npy, ...)")
    if len({prefix for prefix, _, _ in numbered}) > 1:
        raise InputError(f"{folder}: shards with different name prefixes; keep one set of shards per folder")
    if len({n for _, n, _ in numbered}) != len(numbered):
        raise InputError(f"{folder}: two shards carry the same number")
    return [p for _, _, p in sorted(numbered, key=lambda t: t[1])]


def open_url(url: str | os.PathLike, storage_options: dict | None = None, label: str = "embeddings") -> EmbeddingSource:
    """Open an input behind a URL (or a plain path): a ``.npy`` shard folder, one ``.npy`` (read by byte
    ranges), or an HDF5 file (``URL.h5`` or ``URL.h5:DATASET``, read through a file object with ranged
    reads).  Reads only headers, each request bounded by :func:`io_timeout`."""
    url = str(url)
    storage_options = dict(storage_options or {})
    head, _, tail = url.rpartition(":")
    if head.lower().endswith((".h5", ".hdf5", ".he5")) and tail and "/" not in tail:
        return open_h5_url(head, tail, storage_options, label)
    if url.lower().endswith((".h5", ".hdf5", ".he5")):
        return open_h5_url(url, "embeddings", storage_options, label)
    fs, path = url_fs(url, storage_options)
    return bounded(lambda: _open_npy_url(url, fs, path, storage_options, label), url)


def _open_npy_url(url: str, fs, path: str, storage_options: dict, label: str) -> UrlSource:
    if not fs.exists(path):
        raise InputError(f"{url}: no such file or folder (the {label})")
    paths = shard_paths(fs, path) if fs.isdir(path) else [path]
    if len(paths) == 1 and not paths[0].lower().endswith(".npy"):
        raise InputError(f"{url}: unknown file type; use .npy, a folder of .npy shards, or .h5/.hdf5")
    infos = tuple(npy_info(fs, p) for p in paths)
    for info in infos:
        if len(info.shape) != 2:
            raise InputError(f"{info.path}: expected a 2-D shard (rows, d), got shape {info.shape}")
        if np.dtype(info.dtype).kind != "f":
            raise InputError(f"{info.path}: dtype {info.dtype} is not floating point; store float16 or float32")
    if len({i.shape[1] for i in infos}) > 1 or len({i.dtype for i in infos}) > 1:
        raise InputError(f"{url}: shards differ in dimension or dtype")
    offsets = np.concatenate([[0], np.cumsum([i.shape[0] for i in infos])]).astype(np.int64)
    shape = (int(offsets[-1]), infos[0].shape[1])
    if shape[0] == 0:
        raise InputError(f"{url}: empty ({label})")
    return UrlSource(
        Path(path),
        None,
        "url",
        shape,
        np.dtype(infos[0].dtype),
        label,
        url=url,
        storage_options=storage_options,
        infos=infos,
        offsets=offsets,
    )


@dataclass
class H5UrlSource(EmbeddingSource):
    """An HDF5 dataset behind a URL, read through an fsspec file object (h5py reads by ranges from it).

    Picklable (URL, dataset name and storage options, no open handle), so tasks open it where they run."""

    url: str = ""
    storage_options: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"{self.url}:{self.dataset}"

    @contextlib.contextmanager
    def _raw(self):
        with _h5_url_file(self.url, self.storage_options) as f:
            yield f[self.dataset]


@contextlib.contextmanager
def _h5_url_file(url: str, storage_options: dict):
    from nnn_cli.data.h5 import check_h5_self_contained, h5py_module, short_error

    fs, path = url_fs(url, storage_options)
    with fs.open(path, "rb", block_size=1 << 20, cache_type="bytes") as fh:
        try:
            f = h5py_module().File(fh, "r")
        except OSError as exc:
            raise InputError(f"{url}: not a readable HDF5 file ({short_error(exc)})") from None
        try:
            check_h5_self_contained(f, url)
            yield f
        finally:
            f.close()


def open_h5_url(url: str, dataset: str, storage_options: dict, label: str) -> H5UrlSource:
    """Open ``URL.h5:DATASET`` (header, shape, dtype and ids only)."""
    from nnn_cli.data.h5 import decode_strings

    def probe():
        fs, path = url_fs(url, storage_options)
        if not fs.exists(path):
            raise InputError(f"{url}: no such file (the {label})")
        with _h5_url_file(url, storage_options) as f:
            if dataset not in f or not hasattr(f[dataset], "shape"):
                have = ", ".join(sorted(f.keys())) or "nothing"
                raise InputError(f"{url}: no dataset {dataset!r} (the file has: {have}); name one with {url}:DATASET")
            dset = f[dataset]
            ids = decode_strings(f["ids"][()]) if "ids" in f and dataset != "ids" else None
            return tuple(int(x) for x in dset.shape), dset.dtype, ids

    shape, dtype, ids = bounded(probe, url)
    if len(shape) != 2 or 0 in shape:
        raise InputError(f"{url}:{dataset}: expected a non-empty 2-D array (N, d), got shape {shape}")
    if np.dtype(dtype).kind != "f":
        raise InputError(f"{url}:{dataset}: dtype {dtype} is not floating point; store float16 or float32")
    if ids is not None and len(ids) != shape[0]:
        raise InputError(f"{url}: dataset 'ids' has {len(ids)} entries but {dataset!r} has {shape[0]} rows")
    return H5UrlSource(
        Path(url),
        dataset,
        "h5url",
        (shape[0], shape[1]),
        np.dtype(dtype),
        label,
        _ids=ids,
        url=url,
        storage_options=storage_options,
    )


# ---------------------------------------------------------------------------
# Whole-object outputs: .npy arrays and JSON (manifest)
# ---------------------------------------------------------------------------
def write_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Commit ``data`` at ``url`` whole: temp file + fsync + ``os.replace`` locally, one PUT elsewhere."""
    fs, path = url_fs(url, storage_options)
    if is_local(fs):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".nnn-", suffix=".part", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    fs, path = url_fs(url, storage_options)
    return fs.cat_file(path)


def exists(url: str, storage_options: dict | None = None) -> bool:
    fs, path = url_fs(url, storage_options)
    return bool(fs.exists(path))


def write_npy(url: str, arr: np.ndarray, storage_options: dict | None = None) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    write_bytes(url, buf.getvalue(), storage_options)


def read_npy(url: str, storage_options: dict | None = None) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(url, storage_options)), allow_pickle=False)


def write_json(url: str, obj: dict, storage_options: dict | None = None) -> None:
    write_bytes(url, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), storage_options)


def read_json(url: str, storage_options: dict | None = None) -> dict:
    try:
        return json.loads(read_bytes(url, storage_options).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{url}: not a readable JSON file ({exc})") from None
