"""The one exact top-k engine: BLAS GEMM tiles + O(n) selection, deterministic (ties to the lower index).

- :class:`GemmIndex` (search: scores and indices) and :class:`RunningTopScores`
  (bias: scores only, database fed in blocks) compute every score in a fixed
  tile of the global (query, database) grid, so results do not depend on how
  the caller blocks its inputs.
- Threads: :func:`set_workers` (the CLI's ``--threads``) sets how many threads
  the selection and tiles use; each runs single-threaded BLAS.

Array math only: numpy and threadpoolctl, no faiss.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` by long-running library functions."""

DEFAULT_QUERY_BLOCK = 8192


_WORKERS: int | None = None


def set_workers(workers: int | None) -> None:
    """Threads for the exact engine's tiles and selection (None or 0: one per CPU core)."""
    global _WORKERS
    _WORKERS = int(workers) if workers else None


def sort_ties(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each row by score descending, then index ascending."""
    order = np.lexsort((indices, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(indices, order, -1)


def search_blocks(index, queries: np.ndarray, k: int, block_rows: int = DEFAULT_QUERY_BLOCK,
                  progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of an exact index (``ntotal``, ``search(x, k)``) for every query row, in query blocks
    (bounded memory, progress); returns (scores, indices), ties to the lower index."""
    nq = len(queries)
    k = int(min(k, index.ntotal))
    scores = np.empty((nq, k), dtype=np.float32)
    indices = np.empty((nq, k), dtype=np.int64)
    for start in range(0, nq, block_rows):
        stop = min(nq, start + block_rows)
        scores[start:stop], indices[start:stop] = index.search(queries[start:stop], k)
        if progress:
            progress(stop, nq)
    return scores, indices


SCORE_TILE_ELEMENTS = 8 * 1024 * 1024
"""Scores held at once by :class:`GemmIndex` (32 MB of float32)."""


def _rows_per_tile(n_database: int) -> int:
    return max(1, SCORE_TILE_ELEMENTS // max(1, n_database))


def top_k_exact(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of the ``k`` largest entries of each row of ``scores``, best first,
    equal values ordered by the lower column index (which also decides who gets the k-th place).

    O(n) per row: ``np.argpartition`` picks k candidates, then only those are
    sorted.  Rows where the k-th value is shared with an entry left outside
    (rare: exact duplicates) are redone over every entry at or above it.
    """
    b, n = scores.shape
    k = min(k, n)
    if k == n:
        cand = np.broadcast_to(np.arange(n), (b, n)).copy()
    else:
        cand = np.argpartition(scores, n - k, axis=1)[:, n - k:]
    vals = np.take_along_axis(scores, cand, 1)
    order = np.lexsort((cand, -vals), axis=1)
    vals, cand = np.take_along_axis(vals, order, 1), np.take_along_axis(cand, order, 1)
    if k < n:
        tied = np.flatnonzero(np.count_nonzero(scores >= vals[:, -1:], axis=1) > k)
        if len(tied):
            vals[tied], cand[tied] = _top_k_with_ties(scores[tied], vals[tied, -1], k)
    return vals, cand.astype(np.int64, copy=False)


def _top_k_with_ties(scores: np.ndarray, kth: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(scores >= kth[:, None])  # row-major: columns ascending within a row
    vals = scores[rows, cols]
    order = np.lexsort((cols, -vals, rows))
    counts = np.bincount(rows, minlength=len(scores))
    picked = order[((np.cumsum(counts) - counts)[:, None] + np.arange(k)).ravel()]
    return vals[picked].reshape(-1, k), cols[picked].reshape(-1, k)


def parallel_top_k(scores: np.ndarray, k: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k_exact` over row slices in threads (numpy releases the GIL while selecting)."""
    if workers <= 1 or len(scores) < 2 * workers:
        return top_k_exact(scores, k)
    bounds = np.linspace(0, len(scores), workers + 1).astype(int)
    parts = list(thread_pool(workers).map(lambda ab: top_k_exact(scores[ab[0]:ab[1]], k), zip(bounds[:-1], bounds[1:])))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


_EXECUTORS: dict = {}


def thread_pool(workers: int):
    from concurrent.futures import ThreadPoolExecutor

    if workers not in _EXECUTORS:
        _EXECUTORS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="nnn-topk")
    return _EXECUTORS[workers]


def selection_threads() -> int:
    """Threads for the exact engine: :func:`set_workers`'s value, else the CPU count."""
    return _WORKERS or max(1, os.cpu_count() or 1)


class GemmIndex:
    """Exact inner-product search by BLAS GEMM tiles + O(n) selection; ties go to the lower index.

    Same interface as a faiss index (``ntotal``, ``search(x, k) -> (D, I)``);
    about 3x faster than ``IndexFlatIP`` for top-10 over 5k items here,
    because faiss's per-query result heaps cost more than the GEMM itself.
    The query tile depends only on the database size, never on the caller's
    block size, so every score comes from the same BLAS call shape.
    """

    exact_ties = True

    def __init__(self, database: np.ndarray):
        self.database = np.ascontiguousarray(database, dtype=np.float32)
        self.ntotal = len(self.database)
        self.d = self.database.shape[1]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(int(k), self.ntotal)
        scores = np.empty((len(queries), k), dtype=np.float32)
        indices = np.empty((len(queries), k), dtype=np.int64)
        tile = _rows_per_tile(self.ntotal)
        workers = selection_threads()
        for start in range(0, len(queries), tile):
            stop = min(len(queries), start + tile)
            scores[start:stop], indices[start:stop] = parallel_top_k(queries[start:stop] @ self.database.T, k, workers)
        return scores, indices


def topk_inner_product(queries: np.ndarray, database: np.ndarray, k: int,
                       block_rows: int = DEFAULT_QUERY_BLOCK,
                       progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``database`` by inner product for each query row (scores, indices)."""
    return search_blocks(GemmIndex(database), queries, k, block_rows, progress)


# ---------------------------------------------------------------------------
# Scores-only exact top-k (the bias step): numpy GEMM tiles + np.partition
# ---------------------------------------------------------------------------
QUERY_TILE = 1024
"""Query rows per GEMM tile.  Fixed, so that every score is computed by the same
BLAS call shape whether the inputs are in memory or streamed: results are then
bit-identical across the in-memory and out-of-core paths."""

DATABASE_TILE = 8192
"""Database rows per GEMM tile (a 1024 x 8192 float32 score tile is 32 MB, one per worker thread;
measured as fast per FLOP as 16384-row tiles)."""


def select_top(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values of each row, unordered (partitions ``scores`` in place)."""
    if scores.shape[1] <= k:
        return scores
    scores.partition(scores.shape[1] - k, axis=1)
    return scores[:, scores.shape[1] - k:]


def merge_top_scores(best: np.ndarray | None, new: np.ndarray, k: int) -> np.ndarray:
    """Merge two per-row sets of top scores into the ``k`` largest per row (unordered)."""
    if best is None:
        return np.array(new, dtype=np.float32, copy=True)
    return np.array(select_top(np.concatenate([best, new], axis=1), k), copy=True)


def sort_descending(best: np.ndarray) -> np.ndarray:
    """Each row sorted from highest to lowest score (float32, C-contiguous)."""
    return np.ascontiguousarray(np.sort(best, axis=1)[:, ::-1], dtype=np.float32)


class RunningTopScores:
    """The running top-``k`` scores of fixed query rows against database blocks fed in order.

    Every (query tile, database tile) pair is one GEMM of the fixed shape
    :data:`QUERY_TILE` x :data:`DATABASE_TILE` followed by an O(n) partition,
    so results are bit-identical however the database is split into blocks
    (in memory, streamed, sharded).  With ``workers > 1`` the database tiles
    are dealt round-robin to that many threads, each running single-threaded
    BLAS and its own selection and keeping its own running top-k, merged at
    the end: the selection then uses every core too (measured: 0.5 s saved
    on a 5 s bias step at N=5k, M=118k, k=128 on 2 cores).  Only values are
    kept, so the split cannot change the result.
    """

    def __init__(self, queries: np.ndarray, k: int, workers: int | None = None):
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = int(k)
        self.workers = max(1, int(workers or selection_threads()))
        self.tiles = [self.queries[t:t + QUERY_TILE] for t in range(0, len(self.queries), QUERY_TILE)]
        self._best: list[list[np.ndarray | None]] = [[None] * len(self.tiles) for _ in range(self.workers)]
        self._next_worker = 0

    def _fold(self, worker: int, database_tiles: list[np.ndarray]) -> None:
        best = self._best[worker]
        for tile in database_tiles:
            for i, q in enumerate(self.tiles):
                scores = q @ tile.T
                best[i] = merge_top_scores(best[i], select_top(scores, self.k), self.k)

    def add(self, database: np.ndarray) -> None:
        """Fold one database block (rows in a multiple of DATABASE_TILE, except the last block)."""
        database = np.ascontiguousarray(database, dtype=np.float32)
        parts: list[list[np.ndarray]] = [[] for _ in range(self.workers)]
        for start in range(0, len(database), DATABASE_TILE):
            parts[self._next_worker].append(database[start:start + DATABASE_TILE])
            self._next_worker = (self._next_worker + 1) % self.workers
        run_parallel(lambda w: self._fold(w, parts[w]), [w for w in range(self.workers) if parts[w]])

    def result(self) -> np.ndarray:
        """(Q, k') float32 sorted descending (k' = k, or fewer if fewer database rows were folded)."""
        if not len(self.queries):
            return np.empty((0, self.k), dtype=np.float32)
        out = []
        for i in range(len(self.tiles)):
            merged = None
            for best in self._best:
                if best[i] is not None:
                    merged = merge_top_scores(merged, best[i], self.k)
            out.append(sort_descending(merged))
        return np.vstack(out)


def run_parallel(fn: Callable, items: list) -> None:
    """Call ``fn(item)`` for each item, one thread each when there are several, with numpy's BLAS
    limited to one thread meanwhile (threadpoolctl): each thread runs its own GEMMs and selections,
    so the selection uses every core too."""
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        list(thread_pool(len(items)).map(fn, items))


def topk_scores(queries: np.ndarray, database: np.ndarray, k: int,
                progress: ProgressFn | None = None) -> np.ndarray:
    """(Q, k) float32: the ``k`` highest inner products of each query with ``database``, descending.

    Exact.  A plain GEMM per (query tile, database tile) followed by an
    O(n) ``np.partition`` selection runs close to the machine's GEMM rate;
    measured here about 4-6x faster than ``IndexFlatIP.search`` at k=128,
    whose per-query heaps dominate for large k.  Only scores are kept, so
    there are no ties to break: equal scores are equal values.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    k = int(min(k, len(database)))
    out = np.empty((len(queries), k), dtype=np.float32)
    step = QUERY_TILE * 8
    for start in range(0, len(queries), step):
        stop = min(len(queries), start + step)
        running = RunningTopScores(queries[start:stop], k)
        running.add(database)
        out[start:stop] = running.result()
        if progress:
            progress(stop, len(queries))
    return out
