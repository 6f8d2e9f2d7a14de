"""How biases are computed for the rows a vector store holds (``nnn bias URI --in-place``): read the rows,
run the bias plan (or merge the stored top-k with new reference queries), and commit ``nnn_bias``,
``nnn_vector`` and ``nnn_topk`` through the store's own atomic write.  The store is used through its
interface only (:class:`~nnn_cli.data.stores.common.VectorStore`); no store kind is named here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from nnn_cli.core.nnn import bias_from_topk, check_k, merge_topk, reference_topk
from nnn_cli.core.topk import ProgressFn
from nnn_cli.data.inputs import check_same_dim
from nnn_cli.data.stores.common import (
    StoreSource,
    VectorStore,
    WriteSpec,
    check_unique,
    l2_rows,
    nnn_rows,
    store_source,
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
from nnn_cli.errors import ParameterError
from nnn_cli.scale.pipeline import BiasParams
from nnn_cli.scale.runs import compute_bias
from nnn_cli.scale.scheduler import EngineOptions


@dataclass
class InPlaceOutcome:
    """What an in-place run wrote: ``rows`` biases (0: nothing new), with the parameters it used."""

    rows: int
    n_gallery: int
    n_reference: int
    alpha: float
    k: int
    metric: str
    seconds: float
    bias_mean: Optional[float] = None
    n_added: Optional[int] = None


def _gallery(store: VectorStore, target: Target, only_missing: bool = False) -> tuple[np.ndarray, StoreSource]:
    ids, vectors = store.read(target.table, target.column, target.id_column, only_missing=only_missing)
    return ids, store_source(where(store, target.table, target.column), vectors, ids)


def bias_in_place(
    store: VectorStore,
    target: Target,
    r_src: Any,
    alpha: Optional[float],
    k: Optional[int],
    metric: str,
    only_new: bool,
    index: Any,
    progress: ProgressFn | None = None,
) -> InPlaceOutcome:
    """Every row's bias (``only_new``: the rows without one, with the recorded parameters) through the bias
    pipeline (:func:`~nnn_cli.scale.runs.compute_bias`), committed by the store's sink at once; ``index``:
    the reference side's search (:class:`~nnn_cli.jobs.common.IndexOptions`, exact by default)."""
    meta = store.read_meta(target.table)
    if only_new:
        alpha, k, metric = recorded_params(store, target, meta, alpha, k, metric, r_src)
    assert alpha is not None and k is not None
    ids, g_src = _gallery(store, target, only_missing=only_new)
    if len(ids) == 0:
        return InPlaceOutcome(0, int((meta or {}).get("n_gallery", 0)), r_src.n, alpha, k, metric, 0.0)
    check_same_dim(g_src, r_src)
    params = BiasParams(alpha, check_k(k, r_src.n), metric, True)
    old = meta if only_new else None
    sink = StoreBiasSink(store, target, ids, g_src, metric,
                         lambda: in_place_meta(old, store, target, g_src, r_src, params.alpha, params.k, metric))  # fmt: skip
    sink.check(False)
    out = compute_bias(g_src, r_src, params, sink, EngineOptions(), index, progress=progress)
    n_gallery = (int(old.get("n_gallery", 0)) if old else 0) + g_src.n
    return InPlaceOutcome(len(ids), n_gallery, r_src.n, alpha, k, metric, out.seconds, float(sink.bias.mean()))


def reference_add_in_place(store: VectorStore, target: Target, new_src: Any, metric: str) -> InPlaceOutcome:
    """Every row's bias after adding new reference queries: its stored top-k merged with its top-k against
    them, exactly as `nnn bias --update BIAS.h5 --reference-add NEW` does for a bias file."""
    meta = store.read_meta(target.table)
    parts = reference_add_parts(store, target, meta, metric, new_src)
    assert meta is not None
    ids, g_src = _gallery(store, target)
    check_same_dim(g_src, new_src)
    alpha, k = float(meta["alpha"]), int(meta["k"])
    old_topk = store.read_topk(target.table, target.id_column, ids, k)
    t0 = time.perf_counter()
    g = g_src.read(metric)
    topk = merge_topk(old_topk, reference_topk(g, new_src.read(metric), min(k, new_src.n)), k)
    b = bias_from_topk(topk, alpha, k)
    meta = reference_add_meta(meta, parts, new_src)
    store.write_bias(target.table, target.column, target.id_column, ids, b, nnn_rows(g, b), topk, meta)
    seconds = time.perf_counter() - t0
    n_ref = int(meta["n_reference"])
    return InPlaceOutcome(len(ids), int(meta.get("n_gallery", len(ids))), n_ref, alpha, k, metric, seconds,
                          float(b.mean()), new_src.n)  # fmt: skip


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
