"""How biases are computed for the rows a vector store holds (``nnn bias URI --in-place``): where the bias
pipeline reads its gallery and writes its biases (:func:`bias_place`: files, or a store's table read by
blocks and written back through its sink), the ``--reference-add`` merge of the stored top-k, and the rows of
an export.  The store is used through its interface only (:class:`~nnn_cli.data.stores.common.VectorStore`);
no store kind is named here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from nnn_cli.core.nnn import bias_from_topk, merge_topk, reference_topk
from nnn_cli.core.topk import QUERY_TILE, ProgressFn
from nnn_cli.data.inputs import check_same_dim
from nnn_cli.data.sources import DEFAULT_BLOCK_ROWS
from nnn_cli.data.stores import open_store
from nnn_cli.data.stores.common import (
    VectorStore,
    WriteSpec,
    check_unique,
    closing,
    l2_rows,
    nnn_rows,
    where,
)
from nnn_cli.data.stores.records import (
    Target,
    check_append,
    export_meta,
    in_place_meta,
    recorded_params,
    reference_add_meta,
    reference_add_parts,
)
from nnn_cli.data.stores.sink import StoreBiasSink
from nnn_cli.data.stores.source import StoreRows, store_rows
from nnn_cli.errors import ParameterError
from nnn_cli.scale.grid import round_up
from nnn_cli.scale.runs import bias_sink, grow_bias
from nnn_cli.scale.scheduler import EngineOptions


@dataclass(frozen=True)
class InPlace:
    """``--in-place``: the gallery names a store (its URI), read from ``target``'s table and column, and the
    biases are written back beside the user's columns; ``only_new``: the rows without a bias, with the
    recorded parameters; ``store_options``: the store's connection options (LanceDB's object store)."""

    target: Target
    only_new: bool = False
    store_options: Optional[dict] = None


class FilePlace:
    """The gallery is a file (or a URL) and the biases go to ``-o`` (a bias file or a run folder)."""

    operation_names = {"create": "create"}

    def gallery(self, open_file: Callable[[], Any]) -> Any:
        return open_file()

    def sink(self, output: Any, inputs: list, engine: EngineOptions, g_src: Any) -> Any:
        return bias_sink(output, inputs, engine, g_src.ids())

    def params(self, alpha: Any, k: Any, metric: str, r_src: Any, g_src: Any) -> tuple[Any, Any, str]:
        return alpha, k, metric

    def fields(self, g_src: Any, sink: Any) -> dict:
        return {}

    def grow(self, *args: Any, **kwargs: Any) -> dict:
        return grow_bias(*args, **kwargs)


@dataclass
class StorePlace:
    """The gallery is a table of ``store`` (open and locked for the whole run): a blocked source, and the
    biases go back to it through :class:`~nnn_cli.data.stores.sink.StoreBiasSink`."""

    store: VectorStore
    spec: InPlace
    block_rows: Optional[int] = None
    _run: dict = field(default_factory=dict)

    @property
    def operation_names(self) -> dict:
        return {"create": "only-new" if self.spec.only_new else "in-place"}

    def gallery(self, open_file: Callable[[], Any]) -> StoreRows:
        t = self.spec.target
        return store_rows(self.store, t.table, t.column, t.id_column, self.spec.only_new, self.block_rows)

    def sink(self, output: Any, inputs: list, engine: EngineOptions, g_src: Any) -> StoreBiasSink:
        rows = self.block_rows or DEFAULT_BLOCK_ROWS
        return StoreBiasSink(self.store, self.spec.target, g_src.keys, self._meta, rows)

    def params(self, alpha: Any, k: Any, metric: str, r_src: Any, g_src: Any) -> tuple[Any, Any, str]:
        """The recorded parameters for ``--only-new`` (what is given must agree, and so must the reference)."""
        old = self.store.read_meta(self.spec.target.table) if self.spec.only_new else None
        if self.spec.only_new:
            alpha, k, metric = recorded_params(self.store, self.spec.target, old, alpha, k, metric, r_src)
        self._run.update(old=old, g_src=g_src, r_src=r_src, alpha=alpha, k=k, metric=metric)
        return alpha, k, metric

    def _meta(self) -> dict:
        r = self._run
        return in_place_meta(r["old"], self.store, self.spec.target, r["g_src"], r["r_src"], r["alpha"], r["k"],
                             r["metric"])  # fmt: skip

    def fields(self, g_src: Any, sink: Any) -> dict:
        t = self.spec.target
        about = {"store": self.store.label, "table": t.table, "column": t.column, "rows": g_src.n}
        return {**about, "only_new": self.spec.only_new, **sink.bias_stats()}

    def grow(self, target: Any, gallery: Any, other: Any, operation: str, output: Any, engine: EngineOptions,
             threads: int = 0, **kwargs: Any) -> dict:  # fmt: skip
        """``--reference-add NEW``: every row's stored top-k merged with its top-k against NEW, block by block."""
        from nnn_cli.data.inputs import open_embeddings

        if output is not None or engine.engine != "local":
            raise ParameterError("--in-place writes the store itself, in this process: drop -o and --engine")
        t0 = time.perf_counter()
        out = reference_add_in_place(self.store, self.spec.target, open_embeddings(other, "new reference queries"),
                                     kwargs.get("metric", "cosine"), self.block_rows, kwargs.get("progress"))  # fmt: skip
        return {**out, "output": self.store.label, "engine": "local", "seconds": time.perf_counter() - t0}


@contextlib.contextmanager
def bias_place(gallery: str, spec: Optional[InPlace], io_timeout: Optional[float], wait: float,
               block_rows: Optional[int] = None) -> Iterator[Any]:  # fmt: skip
    """Where a bias run reads its gallery and writes its biases: files, or (``spec``) a store's table, held
    open and locked (an advisory lock, a file lock) for the whole read, compute and write."""
    if spec is None:
        yield FilePlace()
        return
    store = open_store(gallery, io_timeout=io_timeout, storage_options=spec.store_options, application="nnn bias")
    with closing(store), store.lock(spec.target.table, wait):
        yield StorePlace(store, spec, block_rows)


def reference_add_in_place(
    store: VectorStore,
    target: Target,
    new_src: Any,
    metric: str,
    block_rows: Optional[int] = None,
    progress: ProgressFn | None = None,
) -> dict:
    """Every row's bias after adding new reference queries: its stored top-k merged with its top-k against
    them, exactly as `nnn bias --update BIAS.h5 --reference-add NEW` does for a bias file; the rows are read
    and written by blocks (the stored top-k, N x k, is read whole)."""
    meta = store.read_meta(target.table)
    parts = reference_add_parts(store, target, meta, metric, new_src)
    assert meta is not None
    g_src = store_rows(store, target.table, target.column, target.id_column, False, block_rows)
    check_same_dim(g_src, new_src)
    alpha, k = float(meta["alpha"]), int(meta["k"])
    ids = g_src.keys
    old_topk = store.read_topk(target.table, target.id_column, ids, k)
    new_meta = reference_add_meta(meta, parts, new_src)
    sink = StoreBiasSink(store, target, ids, lambda: new_meta, block_rows or DEFAULT_BLOCK_ROWS)
    new = new_src.read(metric)
    try:
        for b, (start, g) in enumerate(g_src.iter_blocks(metric, round_up(sink.block_rows, QUERY_TILE))):
            stop = start + len(g)
            topk = merge_topk(old_topk[start:stop], reference_topk(g, new, min(k, new_src.n)), k)
            sink.put_block(b, (start, stop), {"bias": bias_from_topk(topk, alpha, k), "topk": topk, "rows": g})
            if progress:
                progress(stop, g_src.n)
        sink.commit({})
    except BaseException:
        sink.abort()
        raise
    return {"n_added": new_src.n, "n_gallery": int(meta.get("n_gallery", g_src.n)), "rows": g_src.n,
            "n_reference": int(new_meta["n_reference"]), "alpha": alpha, "k": k, "metric": metric,
            **sink.bias_stats()}  # fmt: skip


def write_export(
    store: VectorStore, table: str, g_src: Any, bias: np.ndarray, spec: dict, attrs: dict, extra: dict
) -> dict:
    """Write ``[r, b]`` rows (``[r, b, sqrt(M^2 - |[r, b]|^2)]`` for an L2 store) of ``g_src`` into ``table``
    (``spec``: mode, index, store_metric, metric, model); returns the provenance recorded with them."""
    mode, metric = spec["mode"], spec["metric"]
    exists = store.exists(table)
    if mode == "create" and exists:
        raise ParameterError(f"{where(store, table)}: already exists; give --replace to rewrite it or --append")
    old = store.read_meta(table) if mode == "append" else None
    store_metric = spec["store_metric"]
    if mode == "append":
        check_append(store, table, old, exists, metric, attrs, g_src)
        store_metric = (old or {}).get("store_metric", store_metric)
    g = g_src.read(metric)
    offset = int(old.get("n_gallery", 0)) if old else 0
    row_ids = g_src.ids()
    if row_ids is None:
        row_ids = np.asarray([str(i) for i in range(offset, offset + g_src.n)], dtype=object)
    check_unique(f"{g_src.name} ids", row_ids)
    rows, max_norm = nnn_rows(g, bias), None
    if store_metric == "l2":
        rows, max_norm = l2_rows(rows, old.get("l2_max_norm") if old else None)
    meta = {**export_meta(old, g_src, attrs, store_metric, max_norm, offset, metric), **spec.get("model", {})}
    write = WriteSpec(row_ids, g, bias.astype(np.float32), rows, offset, extra)
    store.write_table(table, write, mode, spec["index"], store_metric, meta)
    return meta
