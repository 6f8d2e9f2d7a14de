"""Embedding sources: HDF5 (dataset ``embeddings``, optional ``ids``; ``FILE.h5:DATASET``), ``.npy``,
a folder of ``.npy`` shards, or ``-`` (one array on stdin), opened lazily and read in validated float32 blocks.

Each block is checked (finite, non-zero rows) and L2-normalised for cosine; the content fingerprint
(blake2b of shape, dtype and stored bytes) comes free with the first full pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnn_cli.core.topk import aligned_empty
from nnn_cli.data.h5 import open_h5_safe, short_error
from nnn_cli.data.npy import NpyRows, load_npy  # block reads, not a memory map: RSS stays at one block
from nnn_cli.errors import InputError, MismatchError, ParameterError

METRICS = ("cosine", "ip")
DEFAULT_BLOCK_ROWS = 16384


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    return metric


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
            with NpyRows(self.path) as rows:
                yield rows

    def ids(self) -> np.ndarray | None:
        """Row ids (object array of str) or None when the file has none."""
        return self._ids

    # -- validated reads --------------------------------------------------
    def iter_blocks(
        self, metric: str = "cosine", block_rows: int = DEFAULT_BLOCK_ROWS, fingerprint: bool = True
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, block)`` with ``block`` float32 (rows, d), checked and normalised.

        The content hash comes free with the first full pass; later passes, and a pass with
        ``fingerprint=False`` (the leak sketch, read beside the bias, which takes the hash), skip it."""
        check_metric(metric)
        hasher = _fingerprint_hasher(self.shape, self.dtype) if fingerprint and self._fingerprint is None else None
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
            raise InputError(f"{self.name}: cannot read data ({short_error(exc)}); the file may be truncated") from None
        if hasher is not None:
            self._fingerprint = hasher.hexdigest()

    def rows(self, start: int, stop: int, metric: str = "cosine", hasher=None) -> np.ndarray:
        """Rows ``[start, stop)`` as float32, checked and normalised (only those rows are read).

        ``hasher`` (a ``hashlib`` object), when given, is updated with the stored bytes, so a task that reads
        rows anyway gets their content hash (:meth:`fingerprint_rows`) for free."""
        check_metric(metric)
        start, stop = max(0, int(start)), min(self.n, int(stop))
        try:
            with self._raw() as raw:
                chunk = np.ascontiguousarray(raw[start:stop])
        except InputError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{self.name}: cannot read data ({short_error(exc)}); the file may be truncated") from None
        self.bytes_read = getattr(self, "bytes_read", 0) + chunk.nbytes  # reported by tasks
        if hasher is not None:
            hasher.update(chunk.reshape(-1).view(np.uint8))
        return self._prepare(chunk, start, metric)

    def rows_hasher(self, start: int, stop: int):
        """The hasher :meth:`fingerprint_rows` starts from for rows ``[start, stop)`` (feed it to :meth:`rows`)."""
        start, stop = max(0, int(start)), min(self.n, int(stop))
        return _fingerprint_hasher((stop - start, self.dim), self.dtype)

    def take_rows(
        self, positions: np.ndarray, metric: str = "cosine", block_rows: int = DEFAULT_BLOCK_ROWS
    ) -> np.ndarray:
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
            raise InputError(f"{self.name}: cannot read data ({short_error(exc)}); the file may be truncated") from None
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
            raise InputError(f"{self.name}: cannot read data ({short_error(exc)}); the file may be truncated") from None
        return hasher.hexdigest()

    def _prepare(self, chunk: np.ndarray, start: int, metric: str, offsets: np.ndarray | None = None) -> np.ndarray:
        """Check a block (no NaN/Inf, no zero rows) and normalise it for cosine.

        Row ``i`` of ``chunk`` is file row ``start + i``, or ``start + offsets[i]``
        when the chunk holds picked rows (used in error messages).

        One pass computes the squared norms; only when one of them is not a
        positive finite number are the rows looked at in detail (a NaN/Inf
        entry, a zero row, or float32 overflow/underflow of the square).
        """
        if chunk.dtype == np.float32:
            block = chunk
        else:  # converted into an aligned block (see below)
            block = aligned_empty(chunk.shape)
            np.copyto(block, chunk, casting="unsafe")
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
            norms64 = np.linalg.norm(block.astype(np.float64), axis=1)  # no float32 overflow/underflow
            if metric != "cosine":  # raw values are kept; scores that overflow are refused where they are computed
                return np.ascontiguousarray(block)
            block = (block.astype(np.float64) / norms64[:, None]).astype(np.float32)
            return np.ascontiguousarray(block)
        if metric == "cosine":  # into a 64-byte aligned block: a GEMM operand as it is (no copy per tile)
            block = np.divide(block, norms[:, None], out=aligned_empty(block.shape))
        return np.ascontiguousarray(block, dtype=np.float32)


def _offset(offsets: np.ndarray | None, i: int) -> int:
    return i if offsets is None else int(offsets[i])


def _fingerprint_hasher(shape: tuple[int, ...], dtype: np.dtype):
    """The content hash of an embedding array starts from its shape and dtype."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(f"{tuple(int(x) for x in shape)}|{np.dtype(dtype).str}".encode())
    return hasher


def read_ids_file(path: str | os.PathLike, n: int, what: str, column: str | None = None) -> np.ndarray:
    """Ids from a file, one per row of ``what`` (``n`` rows): ``.txt`` (one a line), ``.npy`` (1-D),
    ``.json`` (a list, or an object with ``ids``: the sidecar ``nnn embed`` writes), ``.parquet``
    (the first column, or see :func:`nnn_cli.data.parquet.parquet_ids`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ids file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        raw = load_npy(path, "ids")
        ids = [str(v) for v in raw.reshape(-1)]
    elif suffix == ".json":
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        data = data.get("ids") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of ids (or an object with 'ids')")
        ids = [str(v) for v in data]
    elif suffix == ".parquet":
        from nnn_cli.data.parquet import parquet_ids

        return parquet_ids([path], column, n, str(path))
    else:
        try:
            ids = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: ids file is not UTF-8 text ({exc.reason})") from None
    if len(ids) != n:
        raise MismatchError(f"{path}: holds {len(ids)} ids but {what} has {n} rows")
    return np.asarray(ids, dtype=object)


def sidecar_of(path: Path) -> Path:
    """``FILE.npy.json``: where ``nnn embed`` puts a ``.npy`` output's ids and attributes."""
    return path.with_name(path.name + ".json")


def read_sidecar_ids(path: Path, n: int) -> np.ndarray | None:
    """The ids in ``FILE.npy.json`` (written by ``nnn embed``), or None when there is no usable sidecar.

    A sidecar whose id count differs from the array's rows is stale: refused, naming both files.
    """
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        return None
    import json

    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None  # not ours
    if not isinstance(data, dict) or not isinstance(data.get("ids"), list):
        return None
    if len(data["ids"]) != n:
        raise MismatchError(
            f"{sidecar}: holds {len(data['ids'])} ids but {path} has {n} rows "
            "(a stale sidecar? remove it or re-run nnn embed)"
        )
    return np.asarray([str(v) for v in data["ids"]], dtype=object)


def sidecar_attrs(path: Path) -> dict:
    """The attributes recorded in ``FILE.npy.json`` (model, modality, ...), without ids; {} if none."""
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        return {}
    import json

    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k not in ("ids", "skipped")}
