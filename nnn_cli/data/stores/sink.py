"""A vector store's table as a :class:`~nnn_cli.data.contracts.Sink` of the bias pipeline
(``nnn bias URI --table T --in-place``): blocks are gathered on the driver, and :meth:`StoreBiasSink.commit`
writes ``nnn_bias``, ``nnn_vector`` (``[r, b]``) and ``nnn_topk`` of every row in one atomic store write
(a transaction, a new table version, a new collection), with the provenance the run records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnn_cli.data.contracts import BlockRecord
from nnn_cli.data.stores.common import StoreSource, VectorStore, nnn_rows, where
from nnn_cli.data.stores.records import Target
from nnn_cli.errors import ParameterError


@dataclass
class StoreBiasSink:
    """The rows ``ids`` of ``target`` in ``store`` (already open and locked by the caller); ``gallery`` is the
    source read from them (its rows become ``[r, b]``); ``meta()`` is called at commit for the provenance."""

    store: VectorStore
    spot: Target
    ids: np.ndarray
    gallery: StoreSource
    metric: str
    meta: Callable[[], dict]
    attrs: dict = field(default_factory=dict)  # plan figures the pipeline adds (not recorded in the store)
    remote_writes: bool = False
    _bias: np.ndarray | None = field(default=None, repr=False)
    _topk: np.ndarray | None = field(default=None, repr=False)

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
        self._bias = np.empty(n, dtype=np.float32)
        self._topk = np.empty((n, k), dtype=np.float32) if k else None

    def put_block(self, block: int, rows: tuple[int, int], arrays: dict[str, np.ndarray]) -> BlockRecord:
        g0, g1 = rows
        if self._bias is None:
            self.allocate(self.gallery.n, arrays["topk"].shape[1] if "topk" in arrays else None)
        assert self._bias is not None
        self._bias[g0:g1] = arrays["bias"]
        if self._topk is not None and "topk" in arrays:
            self._topk[g0:g1] = arrays["topk"]
        return BlockRecord(block, (g0, g1))

    def record(self, rec: BlockRecord) -> None:
        pass

    def commit(self, attrs: dict) -> None:
        """One atomic write of every row's bias, ``[r, b]`` and top-k, with the run's provenance."""
        b = self.bias
        rows = nnn_rows(self.gallery.read(self.metric), b)
        self.store.write_bias(self.spot.table, self.spot.column, self.spot.id_column, self.ids, b, rows, self._topk,
                              self.meta())  # fmt: skip

    def abort(self) -> None:
        pass  # nothing is written before commit

    def save_extra(self, name: str, data: bytes) -> None:
        pass

    def load_extra(self, name: str) -> bytes | None:
        return None

    @property
    def bias(self) -> np.ndarray:
        assert self._bias is not None
        return self._bias
