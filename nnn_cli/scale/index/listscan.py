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

import math
import threading

import numpy as np

from nnn_cli.core.topk import (
    DATABASE_TILE,
    QUERY_TILE,
    SCORE_TILE_ELEMENTS,
    GemmIndex,
    ProgressFn,
    aligned_empty,
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


def prefix_length(size: int, fraction: float | None) -> int:
    """How many of a list's ``size`` vectors a probe scans under a list prefix ``fraction`` (None: all):
    ``ceil(fraction * size)``, at least one of a non-empty list."""
    if fraction is None or fraction >= 1:
        return int(size)
    return int(min(size, max(1, math.ceil(float(fraction) * int(size)))))


def order_lists_by_centroid(ivf) -> bool:
    """Put each inverted list's vectors (with their ids) in descending order of inner product with the list's
    centroid (ties: the earlier position first), in place; True when anything moved (an ordered index is
    left as it is).

    With inner-product scores the vectors that lean furthest toward their centroid are the ones most
    often in a probing row's top-k (``q . r = q . c (r . c) + q . r_perp``, and the first term is what all
    the rows probing the list share), so a list's head holds most of what a probe finds: the recall
    tuning can then scan only a prefix of each list (:func:`prefix_length`).  The ids move with the
    vectors, so faiss's own search of the (saved) index is unchanged."""
    faiss = faiss_module()
    centroids = _flat_centroids(ivf)
    if centroids is None:
        return False
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    vectors = list_vectors(ivf)
    invlists = ivf.invlists
    moved: list[int] = []

    def one(lst: int) -> None:
        vecs = vectors[lst]
        if len(vecs) < 2:
            return
        order = np.argsort(-(vecs @ centroids[lst]), kind="stable")
        if (order == np.arange(len(order))).all():
            return
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), len(vecs))[order]
        codes = np.ascontiguousarray(vecs[order]).view(np.uint8)
        invlists.update_entries(lst, 0, len(vecs), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        moved.append(lst)

    run_parallel(one, list(range(ivf.nlist)))
    return bool(moved)


def _flat_centroids(ivf) -> np.ndarray | None:
    """The centroids when the coarse quantizer is a flat index (then probing is one GEMM), else None."""
    faiss = faiss_module()
    quantizer = faiss.downcast_index(ivf.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat) or quantizer.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return quantizer.reconstruct_n(0, quantizer.ntotal)


FEW_PROBES = 8
"""Up to this nprobe (and one database tile of centroids), the best lists are picked by repeated ``argmax``
(a pass over the scores each) instead of ``argpartition`` + ``lexsort`` with ids: same lists, ties to the
lower list, measured several times cheaper on (rows, 1,000) centroid scores."""


def _few_probes(centroids: np.ndarray, queries: np.ndarray, nprobe: int) -> np.ndarray:
    """(Q, nprobe) best lists, best first, ties to the lower list: the scores of :class:`GemmIndex` (the same
    QUERY_TILE x centroids GEMMs), then ``nprobe`` rounds of ``argmax``."""
    out = np.empty((len(queries), nprobe), dtype=np.int64)

    def one(start: int) -> None:
        scores = tile_scores(tile_operand(queries[start : start + QUERY_TILE], copy=True), centroids)
        rows = np.arange(len(scores))
        for j in range(nprobe):
            best = scores.argmax(axis=1)  # the first maximum: ties to the lower list
            out[start : start + len(scores), j] = best
            scores[rows, best] = -np.inf

    run_parallel(one, list(range(0, len(queries), QUERY_TILE)))
    return out


def probe_lists(ivf, queries: np.ndarray, nprobe: int, gap: float | None = None, flat: bool = False) -> np.ndarray:
    """(Q, nprobe) int64: each query's ``nprobe`` best lists by centroid inner product (as faiss probes).

    With a flat quantizer this is a GEMM plus an O(n) selection (ties to the
    lower list number); faiss's own quantizer search is several times slower
    for many queries.  Other quantizers (e.g. HNSW) are searched by faiss.
    From :data:`~nnn_cli.scale.index.coarse.TWO_LEVEL_MIN_LISTS` lists, or with a gap rule (``gap``: only
    the lists within ``gap`` of the best centroid score, at most ``nprobe``, ``-1`` padding), the lists
    come from :func:`nnn_cli.scale.index.coarse.probe` (two levels: near-best lists, a fifth of the work;
    ``flat``: every centroid scored).
    """
    from nnn_cli.scale.index.coarse import TWO_LEVEL_MIN_LISTS, coarse_for, probe

    nprobe = int(max(1, min(nprobe, ivf.nlist)))
    if nprobe == ivf.nlist and gap is None:  # every list: exact, in list order
        return np.tile(np.arange(ivf.nlist, dtype=np.int64), (len(queries), 1))
    centroids = _flat_centroids(ivf)
    if centroids is not None and (gap is not None or len(centroids) >= TWO_LEVEL_MIN_LISTS):
        return probe(coarse_for(centroids), queries, nprobe, gap, flat=flat, trim=True)
    if centroids is not None and (nprobe > FEW_PROBES or len(centroids) > DATABASE_TILE):
        return search_blocks(GemmIndex(centroids), queries, nprobe, PROBE_BLOCK)[1]
    if centroids is not None:
        return _few_probes(tile_operand(centroids), queries, nprobe)
    out = np.empty((len(queries), nprobe), dtype=np.int64)
    for start in range(0, len(queries), PROBE_BLOCK):
        block = np.ascontiguousarray(queries[start : start + PROBE_BLOCK], dtype=np.float32)
        out[start : start + len(block)] = ivf.quantizer.search(block, nprobe)[1]
    return out


def _probe_pairs(ivf, queries: np.ndarray, nprobe: int, gap: float | None, flat: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rows, lists) probe pairs by row: :func:`probe_lists` without the padding."""
    from nnn_cli.scale.index.coarse import TWO_LEVEL_MIN_LISTS, coarse_for, probe_pairs

    nprobe = int(max(1, min(nprobe, ivf.nlist)))
    centroids = _flat_centroids(ivf)
    if nprobe < ivf.nlist and centroids is not None and (gap is not None or len(centroids) >= TWO_LEVEL_MIN_LISTS):
        return probe_pairs(coarse_for(centroids), queries, nprobe, gap, flat=flat)
    probes = probe_lists(ivf, queries, nprobe, gap, flat)
    r, c = np.nonzero(probes >= 0)
    return r.astype(np.int64), probes[r, c].astype(np.int32)


LIST_ROW_BLOCK = 65536
"""Query rows whose probes of one list are scored together (blocks at global multiples of it; callers pass
queries that start at such a boundary): the GEMM of each (list, row block) has the same rows, so the same
shape and bytes, however the gallery is split into calls (local chunks, Ray blocks) and whatever the
thread count.  Large, because that GEMM has about ``LIST_ROW_BLOCK * nprobe / nlist`` rows: at 4,096 rows
(1M x 1M, 1,000 lists, nprobe 4: 16 rows a GEMM, 250,000 GEMMs) Python and packing overheads ran the scan
at a third of the GEMM rate; at 65,536 a GEMM has about 260 rows."""

PRIVATE_BEST_BYTES = 128 * 1024 * 1024
"""Bound on the workers' private running top-k arrays together (rows scanned at once are cut to fit)."""

LISTS_PER_STEP = 64
"""Lists scanned between progress reports (and between the workers' joins)."""


def _scan_list(
    queries: np.ndarray, best: np.ndarray, vecs: np.ndarray, blocks: list[np.ndarray], k: int, base: int
) -> None:
    """Fold one list's scores into ``best`` (a worker's private running top-k of rows ``base...``): one GEMM per
    (row block, chunk of at most SCORE_TILE_ELEMENTS scores), shapes fixed by the list and the row grid."""
    vecs = tile_operand(vecs)
    chunk = max(1, SCORE_TILE_ELEMENTS // len(vecs))
    for rows_all in blocks:
        for start in range(0, len(rows_all), chunk):
            rows = rows_all[start : start + chunk]
            q = aligned_empty((len(rows), queries.shape[1]))
            np.take(queries, rows, axis=0, out=q)
            local = rows - base
            best[local] = merge_top_scores(best[local], select_top(tile_scores(q, vecs), k), k)


class _ListScan:
    """The lists' scans over rows ``base:stop``: each worker thread folds into its own running top-k (the
    first to start into ``first``, the output's own rows, so one worker needs no extra copy)."""

    def __init__(self, queries, vectors, rows_by_list, counts, bounds, k: int, base: int, first: np.ndarray):
        self.queries, self.vectors, self.rows_by_list, self.counts = queries, vectors, rows_by_list, counts
        self.ends = np.cumsum(counts)
        self.bounds, self.k, self.base = bounds, k, base
        self.first: np.ndarray | None = first
        self.rows = len(first)
        self.private: dict[int, np.ndarray] = {}
        self.others: list[np.ndarray] = []
        self._lock = threading.Lock()

    def _mine(self) -> np.ndarray:
        mine = self.private.get(threading.get_ident())
        if mine is None:
            with self._lock:
                if self.first is not None:
                    mine, self.first = self.first, None
                else:
                    mine = np.full((self.rows, self.k), -np.inf, dtype=np.float32)
                    self.others.append(mine)
                self.private[threading.get_ident()] = mine
        return mine

    def one(self, lst: int) -> None:
        mine = self._mine()
        rows_all = self.rows_by_list[self.ends[lst] - self.counts[lst] : self.ends[lst]]
        cuts = np.searchsorted(rows_all, self.bounds)
        blocks = [rows_all[cuts[b] : cuts[b + 1]] for b in np.flatnonzero(cuts[1:] > cuts[:-1])]
        _scan_list(self.queries, mine, self.vectors[lst], blocks, self.k, self.base)


def list_major_topk(
    index,
    queries: np.ndarray,
    k: int,
    nprobe: int | None = None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    gap: float | None = None,
    flat: bool = False,
    prefix: float | None = None,
) -> np.ndarray:
    """(Q, k) float32: top-k inner products of each query within its ``nprobe`` probed lists, descending.

    ``index`` must be an ``IndexIVFFlat`` (see :func:`flat_ivf`); ``nprobe``
    defaults to the index's own setting (with ``gap``, the most lists a row probes: see
    :func:`probe_lists`).  Rows whose probed lists hold fewer
    than k vectors are padded with ``-inf``.  The rows probing a list are
    scored in one GEMM per global block of :data:`LIST_ROW_BLOCK` rows
    (``queries`` starts at such a boundary).  The lists are dealt to
    ``threads`` workers (default: the engine's thread count; single-threaded
    BLAS each), each keeping a private running top-k merged at the end: only
    values are kept, and the k largest of a multiset do not depend on the
    split, so the result does not depend on the thread count either.
    ``prefix``: a probe scans only the first :func:`prefix_length` vectors of each list (lists ordered by
    :func:`order_lists_by_centroid`).
    """
    ivf = flat_ivf(index)
    if ivf is None:
        raise ValueError("list_major_topk needs an IVF-Flat inner-product index")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = len(queries)
    best = np.full((nq, k), -np.inf, dtype=np.float32)
    if nq == 0:
        return best
    pair_rows, pair_lists = _probe_pairs(ivf, queries, nprobe or ivf.nprobe, gap, flat)
    vectors = [v[: prefix_length(len(v), prefix)] for v in list_vectors(ivf)]
    workers = max(1, int(threads or selection_threads()))
    span = max(1, PRIVATE_BEST_BYTES // (workers * max(1, k) * 4) // LIST_ROW_BLOCK) * LIST_ROW_BLOCK
    total = len(pair_rows)
    done = 0
    for base in range(0, nq, span):
        stop = min(nq, base + span)
        lo, hi = np.searchsorted(pair_rows, [base, stop])
        order = np.argsort(pair_lists[lo:hi], kind="stable")
        rows_by_list = pair_rows[lo:hi][order]  # ascending within each list (stable sort of row-ordered pairs)
        counts = np.bincount(pair_lists[lo:hi], minlength=ivf.nlist)
        bounds = np.arange(base, stop + LIST_ROW_BLOCK, LIST_ROW_BLOCK)
        todo = [int(lst) for lst in np.flatnonzero(counts) if len(vectors[lst])]
        scan = _ListScan(queries, vectors, rows_by_list, counts, bounds, k, base, best[base:stop])
        for step in range(0, len(todo), LISTS_PER_STEP):
            lists = todo[step : step + LISTS_PER_STEP]
            run_parallel(scan.one, lists, workers)
            done += int(counts[lists].sum())
            if progress:
                progress(done, total)
        for part in scan.others:  # merged into the output by row block (small temporaries)
            for r0 in range(0, stop - base, LIST_ROW_BLOCK):
                r1 = min(stop - base, r0 + LIST_ROW_BLOCK)
                best[base + r0 : base + r1] = merge_top_scores(best[base + r0 : base + r1], part[r0:r1], k)
    return sort_descending(best)


def list_hits(index, queries: np.ndarray, probes: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """(Q, P) int64: how many vectors of list ``probes[i, j]`` score at least ``floor[i]`` against query i
    (0 where ``probes`` is -1): what each probed list adds to a row's top-k when ``floor`` is its exact
    k-th score.  For tuning on a small sample (one GEMM per list and the rows probing it)."""
    return list_hits_by_prefix(index, queries, probes, floor, (1.0,))[0]


def list_hits_by_prefix(
    index, queries: np.ndarray, probes: np.ndarray, floor: np.ndarray, fractions: tuple[float, ...]
) -> np.ndarray:
    """(F, Q, P) int64: :func:`list_hits` when a probe scans only the first :func:`prefix_length` vectors
    of each list, for each of the F ``fractions`` (one GEMM per list, read at each prefix)."""
    ivf = flat_ivf(index)
    if ivf is None:
        raise ValueError("list_hits needs an IVF-Flat inner-product index")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = list_vectors(ivf)
    hits = np.zeros((len(fractions), *probes.shape), dtype=np.int64)
    flat = probes.ravel()
    valid = np.flatnonzero(flat >= 0)
    order = valid[np.argsort(flat[valid], kind="stable")]
    lists = flat[order]
    cuts = np.flatnonzero(np.diff(lists)) + 1

    def one(part: np.ndarray) -> None:
        vecs = vectors[int(flat[part[0]])]
        if not len(vecs):
            return
        rows = part // probes.shape[1]
        q = tile_operand(queries[rows], copy=True)
        above = np.cumsum(tile_scores(q, tile_operand(vecs)) >= floor[rows, None], axis=1, dtype=np.int32)
        for i, fraction in enumerate(fractions):
            hits[i].ravel()[part] = above[:, prefix_length(len(vecs), fraction) - 1]

    run_parallel(one, np.split(order, cuts) if len(order) else [])
    return hits
