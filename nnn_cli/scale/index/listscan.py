"""IVF top-k scores by list-major GEMM: the fast way to probe an IVF-Flat index with many queries.

faiss's ``IndexIVFFlat.search`` walks the probed lists query by query, so
every list vector is read (and multiplied) once per query that probes it, at
SIMD-dot-product speed.  When the queries are a whole gallery (the bias step:
N gallery rows probing an index of M reference queries), each list is probed
by thousands of rows, and the work regroups into one GEMM per list:

    scores(list l) = gallery[rows probing l] @ vectors(l).T

which runs at BLAS speed.  Each list's scores are reduced to their top-k per
row and merged into a running (N, k) top-k.  The probed lists are the same
as faiss's (the ``nprobe`` best centroids by inner product), and scores
within them are exact, so the result equals ``IndexIVFFlat.search`` up to
float rounding; only the order of the work differs.

Scores only (no ids): the bias needs the k highest scores, not who made them.
"""

from __future__ import annotations

import numpy as np

from nnn_cli.core.topk import (
    SCORE_TILE_ELEMENTS,
    GemmIndex,
    ProgressFn,
    merge_top_scores,
    run_parallel,
    search_blocks,
    select_top,
    selection_threads,
    sort_descending,
    tile_operand,
    tile_scores,
)
from nnn_cli.scale.device import faiss_module

PROBE_BLOCK = 65536
"""Query rows assigned to their ``nprobe`` lists per quantizer search call."""


def flat_ivf(index):
    """``index`` as an ``IndexIVFFlat`` (inner product), else None (other kinds use faiss's own search).

    An IVF behind a pre-transform (PCA, OPQ) or with quantized codes does not
    store the vectors we would multiply with, so it is not accepted.
    """
    faiss = faiss_module()
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexIVFFlat) and base.metric_type == faiss.METRIC_INNER_PRODUCT:
        return base
    return None


def list_vectors(ivf) -> list[np.ndarray]:
    """Per inverted list, its float32 vectors (``(size, d)`` views into the index's memory; keep it alive)."""
    faiss = faiss_module()
    invlists = ivf.invlists
    out = []
    for lst in range(ivf.nlist):
        size = int(invlists.list_size(lst))
        if size == 0:
            out.append(np.empty((0, ivf.d), dtype=np.float32))
            continue
        codes = faiss.rev_swig_ptr(invlists.get_codes(lst), size * ivf.code_size)
        out.append(np.frombuffer(codes, dtype=np.float32).reshape(size, ivf.d))
    return out


def _flat_centroids(ivf) -> np.ndarray | None:
    """The centroids when the coarse quantizer is a flat index (then probing is one GEMM), else None."""
    faiss = faiss_module()
    quantizer = faiss.downcast_index(ivf.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat) or quantizer.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return quantizer.reconstruct_n(0, quantizer.ntotal)


def probe_lists(ivf, queries: np.ndarray, nprobe: int) -> np.ndarray:
    """(Q, nprobe) int64: each query's ``nprobe`` best lists by centroid inner product (as faiss probes).

    With a flat quantizer this is a GEMM plus an O(n) selection (ties to the
    lower list number); faiss's own quantizer search is several times slower
    for many queries.  Other quantizers (e.g. HNSW) are searched by faiss.
    """
    nprobe = int(max(1, min(nprobe, ivf.nlist)))
    centroids = _flat_centroids(ivf)
    if centroids is not None:
        return search_blocks(GemmIndex(centroids), queries, nprobe, PROBE_BLOCK)[1]
    out = np.empty((len(queries), nprobe), dtype=np.int64)
    for start in range(0, len(queries), PROBE_BLOCK):
        block = np.ascontiguousarray(queries[start : start + PROBE_BLOCK], dtype=np.float32)
        out[start : start + len(block)] = ivf.quantizer.search(block, nprobe)[1]
    return out


def _scan(queries: np.ndarray, best: np.ndarray, lists: list[tuple[np.ndarray, np.ndarray]], k: int) -> None:
    """Fold each (probing rows, list vectors) pair's scores into ``best`` (rows are disjoint across callers).

    The GEMM shapes depend only on the list and the fixed row block, never on the thread count."""
    for rows_all, vecs in lists:
        chunk = max(1, SCORE_TILE_ELEMENTS // len(vecs))
        for start in range(0, len(rows_all), chunk):
            rows = rows_all[start : start + chunk]
            scores = tile_scores(tile_operand(queries[rows], copy=True), vecs)
            best[rows] = merge_top_scores(best[rows], select_top(scores, k), k)


LIST_ROW_BLOCK = 4096
"""Query rows scanned together (at global multiples of it): fixed, so the GEMM of each (list, row
block) has the same shape whatever the thread count; the blocks are dealt to the threads."""

LISTS_PER_STEP = 32
"""Lists scanned between progress reports (and between the workers' joins)."""


def list_major_topk(
    index,
    queries: np.ndarray,
    k: int,
    nprobe: int | None = None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(Q, k) float32: top-k inner products of each query within its ``nprobe`` probed lists, descending.

    ``index`` must be an ``IndexIVFFlat`` (see :func:`flat_ivf`); ``nprobe``
    defaults to the index's own setting.  Rows whose
    probed lists hold fewer than k vectors are padded with ``-inf``.  The
    query rows are cut into fixed blocks of :data:`LIST_ROW_BLOCK` (``queries``
    starts at such a boundary), scanned by ``threads`` workers (default: the
    engine's thread count) with single-threaded BLAS, so the selection runs
    on every core and the result does not depend on the thread count.
    """
    ivf = flat_ivf(index)
    if ivf is None:
        raise ValueError("list_major_topk needs an IVF-Flat inner-product index")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = len(queries)
    best = np.full((nq, k), -np.inf, dtype=np.float32)
    if nq == 0:
        return best
    probes = probe_lists(ivf, queries, nprobe or ivf.nprobe)
    flat = probes.ravel()
    valid = flat >= 0
    order = np.flatnonzero(valid)[np.argsort(flat[valid], kind="stable")]
    rows_by_list = order // probes.shape[1]  # ascending within each list (stable sort)
    counts = np.bincount(flat[valid], minlength=ivf.nlist)
    ends = np.cumsum(counts)
    vectors = list_vectors(ivf)
    todo = [int(lst) for lst in np.flatnonzero(counts) if len(vectors[lst])]
    workers = max(1, int(threads or selection_threads()))
    bounds = np.arange(0, nq + LIST_ROW_BLOCK, LIST_ROW_BLOCK)
    total, done = int(counts.sum()), 0
    for step in range(0, len(todo), LISTS_PER_STEP):
        parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(bounds) - 1)]
        for lst in todo[step : step + LISTS_PER_STEP]:
            rows_all = rows_by_list[ends[lst] - counts[lst] : ends[lst]]
            cuts = np.searchsorted(rows_all, bounds)
            vecs = tile_operand(vectors[lst])
            for b in np.flatnonzero(cuts[1:] > cuts[:-1]):
                parts[b].append((rows_all[cuts[b] : cuts[b + 1]], vecs))
            done += len(rows_all)
        run_parallel(lambda part: _scan(queries, best, part, k), [part for part in parts if part], workers)
        if progress:
            progress(done, total)
    return sort_descending(best)
