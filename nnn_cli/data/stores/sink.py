"""A vector store's table as a :class:`~nnn_cli.data.contracts.Sink` of the bias pipeline
(``nnn bias URI --table T --in-place``): each block's ``nnn_bias``, ``nnn_vector`` (``[r, b]``) and ``nnn_topk``
go to the store's :class:`~nnn_cli.data.stores.common.BiasWriter` ``block_rows`` rows at a time as the blocks
come, and :meth:`StoreBiasSink.commit` makes them visible at once with the provenance the run records
(PostgreSQL: staged rows, one ``UPDATE`` in one transaction; LanceDB: one new table version; Qdrant: one new
collection behind the alias).  :meth:`StoreBiasSink.abort` leaves the table as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnn_cli.data.contracts import BlockRecord
from nnn_cli.data.sources import DEFAULT_BLOCK_ROWS
from nnn_cli.data.stores.common import BiasWriter, VectorStore, nnn_rows, where
from nnn_cli.data.stores.records import Target
from nnn_cli.errors import ParameterError


@dataclass
class StoreBiasSink:
    """The rows ``ids`` of ``spot`` in ``store`` (open and locked by the caller), in the gallery's order;
    ``meta()`` gives the provenance at commit.  The blocks' ``rows`` (the prepared gallery rows) make ``[r, b]``."""

    store: VectorStore
    spot: Target
    ids: np.ndarray
    meta: Callable[[], dict]
    block_rows: int = DEFAULT_BLOCK_ROWS
    attrs: dict = field(default_factory=dict)  # plan figures the pipeline adds (not recorded in the store)
    remote_writes: bool = False
    writes: list[int] = field(default_factory=list)  # rows per write to the store (tests, benches)
    _writer: BiasWriter | None = field(default=None, repr=False)
    _stats: list[float] = field(default_factory=lambda: [0.0, np.inf, -np.inf, 0.0], repr=False)  # sum min max n

    @property
    def target(self) -> str:
        return where(self.store, self.spot.table, self.spot.column)

    def check(self, resume: bool) -> None:
        if resume:
            raise ParameterError(f"{self.target}: --resume applies to run folders; a store is written whole")
        return None

    def kept_blocks(self, old: Any, header: dict, block_inputs: dict) -> dict[int, BlockRecord]:
        return {}

    def allocate(self, n: int, k: int | None) -> None:
        pass  # nothing is held: each block is written as it comes

    def put_block(self, block: int, rows: tuple[int, int], arrays: dict[str, np.ndarray]) -> BlockRecord:
        """Write rows ``[g0, g1)``: ``bias``, ``topk`` and ``rows`` (the gallery rows the bias was computed from)."""
        g0, g1 = rows
        bias, topk, vectors = arrays["bias"], arrays.get("topk"), arrays["rows"]
        if self._writer is None:
            k = None if topk is None else int(topk.shape[1])
            self._writer = self.store.bias_writer(self.spot.table, self.spot.id_column, vectors.shape[1] + 1, k)
        step = max(1, int(self.block_rows))
        for lo in range(0, g1 - g0, step):
            hi = min(g1 - g0, lo + step)
            part = None if topk is None else topk[lo:hi]
            self._writer.put(self.ids[g0 + lo : g0 + hi], bias[lo:hi], nnn_rows(vectors[lo:hi], bias[lo:hi]), part)
            self.writes.append(hi - lo)
        if len(bias):
            b = bias.astype(np.float64)
            s = self._stats
            s[0], s[1], s[2], s[3] = s[0] + b.sum(), min(s[1], b.min()), max(s[2], b.max()), s[3] + len(b)
        return BlockRecord(block, (g0, g1))

    def record(self, rec: BlockRecord) -> None:
        pass

    def commit(self, attrs: dict) -> None:
        """Every written block made visible at once, with the run's provenance (nothing to do for no rows)."""
        if self._writer is not None:
            self._writer.commit(self.meta())

    def abort(self) -> None:
        """What was staged is dropped; the table is as it was."""
        if self._writer is not None:
            self._writer.abort()

    def save_extra(self, name: str, data: bytes) -> None:
        pass

    def load_extra(self, name: str) -> bytes | None:
        return None

    @property
    def bias(self) -> None:
        """Not held (a store's biases are written as they come); :meth:`bias_stats` summarises them."""
        return None

    def bias_stats(self) -> dict:
        total, lo, hi, n = self._stats
        return {} if not n else {"bias_mean": total / n, "bias_min": float(lo), "bias_max": float(hi)}
