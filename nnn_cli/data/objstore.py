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
import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.errors import InputError

HEADER_PROBE = 4096
"""Bytes fetched to parse a ``.npy`` header (a v1/v2 header is almost always shorter; refetched if not)."""

SAMPLE_BYTES = 65536
"""Bytes hashed from the head and the tail of each shard for the cheap input fingerprint."""

_NUMBERED = re.compile(r"^(.*?)(\d+)$")
ID_FILES = ("ids.npy",)


def _fsspec():
    try:
        import fsspec
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise InputError("URL inputs need fsspec: pip install 'nnn-cli[ray]'") from None
    return fsspec


def is_url(spec: str | os.PathLike) -> bool:
    return "://" in str(spec)


def url_fs(url: str | os.PathLike, storage_options: dict | None = None):
    """``(filesystem, path)`` for a URL or a plain path."""
    fs, path = _fsspec().core.url_to_fs(str(url), **(storage_options or {}))
    return fs, path


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
        rows = _ConcatRanged(fs, self.infos, self.offsets)
        try:
            yield rows
        finally:
            self.bytes_read += rows.bytes_read

    def rows(self, start: int, stop: int, metric: str) -> np.ndarray:
        """Rows ``[start, stop)`` as float32, checked and normalised exactly as the local readers do."""
        with self._raw() as raw:
            chunk = np.ascontiguousarray(raw[start:stop])
        return self._prepare(chunk, start, metric)

    def cheap_fingerprint(self) -> str:
        """Hash of the shard table (names, shapes, dtype, sizes) and the head and tail bytes of every shard.

        Costs two small ranged reads per shard, not a pass over the data (at 1e9 rows a content hash
        would cost as much I/O as the job), and still catches a replaced, regenerated or truncated shard.
        """
        fs, _ = url_fs(self.url, self.storage_options)
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.shape}|{np.dtype(self.dtype).str}".encode())
        for info in self.infos:
            h.update(f"|{info.path.rsplit('/', 1)[-1]}|{info.shape}|{info.size}".encode())
            h.update(fs.cat_file(info.path, start=0, end=min(info.size, SAMPLE_BYTES)))
            h.update(fs.cat_file(info.path, start=max(0, info.size - SAMPLE_BYTES), end=info.size))
        return h.hexdigest()


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


def open_url(url: str | os.PathLike, storage_options: dict | None = None, label: str = "embeddings") -> UrlSource:
    """Open a ``.npy`` shard folder or one ``.npy`` behind a URL (or a plain path); reads only headers."""
    url = str(url)
    storage_options = dict(storage_options or {})
    fs, path = url_fs(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"{url}: no such file or folder (the {label})")
    paths = shard_paths(fs, path) if fs.isdir(path) else [path]
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
