"""A vector store's table as a :class:`~nnn_cli.data.contracts.Source` read in blocks (``nnn bias URI --in-place``).

Opening reads the row keys only (one short pass: their count, order and uniqueness, NULL vectors refused);
the vectors are then read by the store's own cursor, ``block_rows`` rows per fetch (PostgreSQL: a server-side
cursor with binary fetches; LanceDB: Arrow record batches; Qdrant: scroll pages), in the order of the keys,
so memory is bounded by a block, never the table.  Each fetch's keys must be the next keys of the first
pass: a table changed between them is refused (run again), never mixed.

The source is read in order (``sequential``): :meth:`StoreRows.rows` far behind the cursor starts a new scan.
Checks, normalisation and the content fingerprint are the file sources' (:class:`EmbeddingSource`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnn_cli.data.sources import DEFAULT_BLOCK_ROWS, EmbeddingSource
from nnn_cli.data.stores.common import VectorStore, where
from nnn_cli.errors import InputError


@dataclass
class ReadStats:
    """What the cursor did: rows per fetch and the most rows the reader held at once (for tests and benches)."""

    fetches: list[int] = field(default_factory=list)
    max_held: int = 0
    scans: int = 0


class StoreRows(EmbeddingSource):
    """Rows of ``column`` of a store's table (``only_missing``: those without a bias), read by the store's
    cursor ``block_rows`` rows at a time; ``ids()`` are the row keys, ``name`` the masked URI, table, column."""

    sequential = True  # read once, in order: the bias pipeline streams it (nnn_cli.scale.runs)
    store: Any = None
    table: str = ""
    column: str = ""
    id_column: str | None = None
    only_missing: bool = False
    block_rows: int = DEFAULT_BLOCK_ROWS
    stats: ReadStats

    @property
    def name(self) -> str:
        return where(self.store, self.table, self.column)

    @property
    def keys(self) -> np.ndarray:
        """The row keys (strings, in the order the rows are read)."""
        assert self._ids is not None
        return self._ids

    @contextlib.contextmanager
    def _raw(self):
        reader = _Cursor(self)
        try:
            yield reader
        finally:
            reader.close()


def store_rows(
    store: VectorStore,
    table: str,
    column: str,
    id_column: str | None = None,
    only_missing: bool = False,
    block_rows: int | None = None,
    label: str = "gallery",
) -> StoreRows:
    """Open ``table``'s ``column`` as a blocked source (reads the keys; the vectors are read when used)."""
    ids, dim = store.scan_keys(table, column, id_column, only_missing)
    src = StoreRows(Path(table), None, "store", (len(ids), int(dim)), np.dtype(np.float32), label)
    src.store, src.table, src.column, src.id_column, src.only_missing = store, table, column, id_column, only_missing
    src.block_rows = max(1, int(block_rows or DEFAULT_BLOCK_ROWS))
    src.stats = ReadStats()
    src._ids = np.asarray(ids, dtype=object)
    return src


class _Cursor:
    """Rows ``[start, stop)`` served from a forward-only scan: holds at most the rows asked for plus one fetch."""

    def __init__(self, src: StoreRows):
        self.src = src
        self.keys = src.keys
        self.scan: Iterator[tuple[np.ndarray, np.ndarray]] | None = None
        self.start = 0  # global row of self.buf[0]
        self.read = 0  # rows fetched so far in this scan
        self.buf = np.empty((0, src.dim), dtype=np.float32)

    def _restart(self) -> None:
        self.close()
        s = self.src
        self.scan = iter(s.store.scan(s.table, s.column, s.id_column, s.only_missing, s.block_rows))
        s.stats.scans += 1
        self.start = self.read = 0
        self.buf = np.empty((0, s.dim), dtype=np.float32)

    def _fetch(self) -> None:
        assert self.scan is not None
        try:
            keys, vectors = next(self.scan)
        except StopIteration:
            raise self._changed(f"it ended after {self.read} of {len(self.keys)} rows") from None
        n = len(keys)
        if self.read + n > len(self.keys) or not np.array_equal(
            np.asarray(keys, dtype=object), self.keys[self.read : self.read + n]
        ):
            raise self._changed(f"rows {self.read}..{self.read + n} are not the rows first listed")
        self.src.stats.fetches.append(n)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (n, self.src.dim):
            raise InputError(
                f"{self.src.name}: the vectors do not all have d={self.src.dim} (a fetch gave {vectors.shape})"
            )
        self.buf = np.concatenate([self.buf, vectors])
        self.read += n

    def _changed(self, why: str) -> InputError:
        return InputError(f"{self.src.name}: the table changed while it was read ({why}); run again")

    def __getitem__(self, span: slice) -> np.ndarray:
        start, stop = int(span.start or 0), int(span.stop if span.stop is not None else len(self.keys))
        if self.scan is None or start < self.start:
            self._restart()
        while self.read < stop:
            if self.start + len(self.buf) <= start:  # nothing held is wanted: drop it before the next fetch
                self.start, self.buf = self.read, self.buf[:0]
            self._fetch()
            self.src.stats.max_held = max(self.src.stats.max_held, len(self.buf))
        lo = start - self.start
        out = self.buf[lo : lo + (stop - start)].copy()
        self.buf = self.buf[stop - self.start :]  # forward only: what was served is let go
        self.start = stop
        return out

    def close(self) -> None:
        if self.scan is not None:
            with contextlib.suppress(Exception):
                self.scan.close()  # type: ignore[attr-defined]
            self.scan = None
