"""The one exact top-k engine: BLAS GEMM tiles + O(n) selection, deterministic (ties to the lower index).

- :class:`GemmIndex` (search: scores and indices) and :class:`RunningTopScores`
  (bias: scores only, database fed in blocks) compute every score in a fixed
  tile of the global (query, database) grid, so results do not depend on how
  the caller blocks its inputs.
- Threads: :func:`set_workers` (the CLI's ``--threads``) sets how many threads
  the selection and tiles use; each runs single-threaded BLAS.

Array math only: numpy and threadpoolctl, no faiss.

Why one module of about 400 lines: the tile grid, the two engines built on it (scores with indices,
scores only) and their thread scheduling must change together to keep results byte-identical.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager

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


def search_blocks(
    index, queries: np.ndarray, k: int, block_rows: int = DEFAULT_QUERY_BLOCK, progress: ProgressFn | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of an exact index (``ntotal``, ``search(x, k)``) for every query row, in query blocks
    (bounded memory, progress); returns (scores, indices), ties to the lower index.

    Blocks are a multiple of :data:`QUERY_TILE` rows, so a :class:`GemmIndex` computes every score in
    the same global tile whatever ``block_rows`` is."""
    nq = len(queries)
    k = int(min(k, index.ntotal))
    step = aligned_block(block_rows, QUERY_TILE)
    scores = np.empty((nq, k), dtype=np.float32)
    indices = np.empty((nq, k), dtype=np.int64)
    for start in range(0, nq, step):
        stop = min(nq, start + step)
        scores[start:stop], indices[start:stop] = index.search(queries[start:stop], k)
        if progress:
            progress(stop, nq)
    return scores, indices


def aligned_block(rows: int, tile: int) -> int:
    """``rows`` rounded up to a positive multiple of ``tile`` (block sizes that keep the global tile grid)."""
    return max(1, -(-max(1, int(rows)) // tile)) * tile


SCORE_TILE_ELEMENTS = 8 * 1024 * 1024
"""Scores held at once per worker (32 MB of float32): one QUERY_TILE x DATABASE_TILE tile."""

QUERY_TILE = 1024
"""Query rows per GEMM tile.  Tiles start at global multiples of QUERY_TILE (callers pass blocks that
start there), so every score is computed by the same BLAS call (same shapes, same operand layout)
whether the inputs are in memory, streamed, sharded or split across threads."""

DATABASE_TILE = 8192
"""Database rows per GEMM tile, at global multiples of DATABASE_TILE (a 1024 x 8192 float32 score
tile is 32 MB, one per worker thread; measured as fast per FLOP as 16384-row tiles)."""

ALIGNMENT = 64
"""Byte alignment of every GEMM operand (a fresh contiguous buffer when the caller's is not)."""


def aligned_empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an :data:`ALIGNMENT`-byte boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.empty(n * dtype.itemsize + ALIGNMENT, dtype=np.uint8)
    off = (-raw.ctypes.data) % ALIGNMENT
    return raw[off : off + n * dtype.itemsize].view(dtype).reshape(shape)


def tile_operand(block: np.ndarray, copy: bool = False) -> np.ndarray:
    """``block`` as a C-contiguous, 64-byte aligned float32 array (copied when it is not one already,
    or always with ``copy=True``): every GEMM of a tile then sees the same operand layout."""
    if not copy and block.dtype == np.float32 and block.flags.c_contiguous and block.ctypes.data % ALIGNMENT == 0:
        return block
    out = aligned_empty(block.shape)
    np.copyto(out, block, casting="same_kind" if block.dtype.kind == "f" else "unsafe")
    return out


def tile_scores(query_tile: np.ndarray, database_tile: np.ndarray, buffer: np.ndarray | None = None) -> np.ndarray:
    """The scores of one tile: ONE BLAS GEMM (``query_tile @ database_tile.T``), to be called under
    :func:`single_threaded_blas`, with operands from :func:`tile_operand` (the query tile a private copy:
    numpy would take a different BLAS routine, SYRK, for ``a @ a.T``).

    ``buffer``: a flat float32 array of at least rows x columns elements, reused by the caller's thread
    for every tile; the scores are written into its head (the same GEMM, the same bytes).  Measured: a
    fresh 32 MB tile is a fresh mapping each time, and faulting it in cost 4-5 ms of system time a tile."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused by the caller, in one line
        if buffer is None:
            return query_tile @ database_tile.T
        out = buffer[: len(query_tile) * len(database_tile)].reshape(len(query_tile), len(database_tile))
        return np.matmul(query_tile, database_tile.T, out=out)


def query_tiles(queries: np.ndarray, groups: Sequence[int] | None = None) -> list[np.ndarray]:
    """Private aligned copies of the QUERY_TILE-row tiles of ``queries`` (which start at a tile boundary).

    ``groups``: the row counts of consecutive segments of ``queries`` (summing to its length), each cut into
    tiles from its own first row, so a segment's tiles (and so its rows' bytes: a GEMM's rounding depends on
    its shape) do not depend on the segments around it."""
    if groups is None:
        groups = [len(queries)]
    if sum(groups) != len(queries):
        raise ValueError(f"groups cover {sum(groups)} rows, not {len(queries)}")
    tiles, start = [], 0
    for count in groups:
        for t in range(start, start + count, QUERY_TILE):
            tiles.append(tile_operand(queries[t : min(start + count, t + QUERY_TILE)], copy=True))
        start += count
    return tiles


_CONTROLLER = None
_LIMIT_LOCK = threading.Lock()
_LIMIT_USERS = 0
_LIMITER = None


@contextmanager
def single_threaded_blas():
    """numpy's BLAS limited to one thread meanwhile (threadpoolctl; the controller is built once).

    Counted across threads: the limit is set by the first user and lifted by the last, so two callers
    overlapping in time (the bias's tiles and the leak sketch beside them) never lift it under each other.
    Enter it first from the thread that runs the step (measured: OpenBLAS 0.3.31 ignores a limit set from
    a second thread once it has run), as ``scale/runs`` does before starting work beside the step."""
    global _CONTROLLER, _LIMIT_USERS, _LIMITER
    with _LIMIT_LOCK:
        if _CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _CONTROLLER = ThreadpoolController()
        if _LIMIT_USERS == 0:
            _LIMITER = _CONTROLLER.limit(limits=1, user_api="blas")
        _LIMIT_USERS += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT_USERS -= 1
            if _LIMIT_USERS == 0 and _LIMITER is not None:
                _LIMITER.restore_original_limits()
                _LIMITER = None


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
        cand = np.argpartition(scores, n - k, axis=1)[:, n - k :]
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


def merge_top_k(
    a: tuple[np.ndarray, np.ndarray] | None, b: tuple[np.ndarray, np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (score desc, index asc) of two per-row candidate sets: a total order, so any
    merge order of the same candidates gives the same bytes."""
    if a is None:
        return b
    vals = np.concatenate([a[0], b[0]], axis=1)
    idx = np.concatenate([a[1], b[1]], axis=1)
    order = np.lexsort((idx, -vals), axis=1)[:, :k]
    return np.take_along_axis(vals, order, 1), np.take_along_axis(idx, order, 1)


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
    Every score comes from one QUERY_TILE x DATABASE_TILE tile of the global
    grid (``search`` takes query blocks starting at a QUERY_TILE boundary, as
    :func:`search_blocks` passes them), one single-threaded GEMM each; each
    tile's top-k is merged by (score desc, index asc), so neither the thread
    count nor the caller's block size changes a byte.
    """

    exact_ties = True

    def __init__(self, database: np.ndarray):
        self.database = tile_operand(np.asarray(database, dtype=np.float32))
        self.ntotal = len(self.database)
        self.d = self.database.shape[1]
        self.db_starts = list(range(0, self.ntotal, DATABASE_TILE))

    def _tile_topk(self, q: np.ndarray, tiles: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        best: tuple[np.ndarray, np.ndarray] | None = None
        for j in tiles:
            s0 = self.db_starts[j]
            vals, idx = top_k_exact(tile_scores(q, self.database[s0 : s0 + DATABASE_TILE]), k)
            best = merge_top_k(best, (vals, idx + s0), k)
        assert best is not None, "no database tiles"
        return best

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k), self.ntotal)
        nq = len(queries)
        scores = np.empty((nq, k), dtype=np.float32)
        indices = np.empty((nq, k), dtype=np.int64)
        if nq == 0 or k == 0:
            return scores, indices
        qt = query_tiles(queries)
        nd = len(self.db_starts)
        workers = selection_threads()
        groups = max(1, min(nd, -(-workers // len(qt))))
        bounds = np.linspace(0, nd, groups + 1).astype(int)
        items = [(i, list(range(bounds[g], bounds[g + 1]))) for i in range(len(qt)) for g in range(groups)]
        parts = run_parallel(lambda item: self._tile_topk(qt[item[0]], item[1], k), items, workers)
        merged: list = [None] * len(qt)
        for (i, _), part in zip(items, parts):
            merged[i] = merge_top_k(merged[i], part, k)
        for i, (vals, idx) in enumerate(merged):
            scores[i * QUERY_TILE : i * QUERY_TILE + len(vals)] = vals + np.float32(0)  # -0.0 -> 0.0
            indices[i * QUERY_TILE : i * QUERY_TILE + len(vals)] = idx
        return scores, indices


def topk_inner_product(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``database`` by inner product for each query row (scores, indices)."""
    return search_blocks(GemmIndex(database), queries, k, block_rows, progress)


# ---------------------------------------------------------------------------
# Scores-only exact top-k (the bias step): numpy GEMM tiles + np.partition
# ---------------------------------------------------------------------------
def select_top(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values of each row, unordered (partitions ``scores`` in place)."""
    if scores.shape[1] <= k:
        return scores
    scores.partition(scores.shape[1] - k, axis=1)
    return scores[:, scores.shape[1] - k :]


def merge_top_scores(best: np.ndarray | None, new: np.ndarray, k: int) -> np.ndarray:
    """Merge two per-row sets of top scores into the ``k`` largest per row (unordered)."""
    if best is None:
        return np.array(new, dtype=np.float32, copy=True)
    return np.array(select_top(np.concatenate([best, new], axis=1), k), copy=True)


def fold_top_scores(best: np.ndarray | None, scores: np.ndarray, k: int, floor: np.ndarray | None = None) -> np.ndarray:
    """The ``k`` largest values per row of ``best`` (a running top-k, unordered) and ``scores`` together.

    Once ``best`` holds ``k`` values a row, only scores above its current k-th best can enter: one
    comparison pass and :func:`numpy.flatnonzero` find them (measured 3x cheaper than partitioning a
    1,024 x 8,192 tile; ``np.nonzero`` on the 2-D mask is several times slower than the flat one), and
    only those few, padded per row with ``-inf`` beside ``best``, are partitioned.  The same multiset of
    values as :func:`merge_top_scores` of :func:`select_top` (a value equal to the k-th best changes no
    value kept; NaN is let in, as a partition would rank it), so the same bytes after
    :func:`sort_descending`.  ``scores`` is a C-contiguous 2-D float32 array.

    ``floor`` (per row): a k-th best that another running top-k of the same rows already holds (the other
    threads' share of the same query tile).  Scores at or below it cannot change the k largest of the
    union, so they are dropped too; a row may then keep fewer than ``k`` values here (padded with
    ``-inf``), which the final merge with that other share makes up."""
    rows, n = scores.shape
    if n <= k or ((best is None or best.shape[1] < k) and floor is None):
        return merge_top_scores(best, select_top(scores, k), k)
    if best is None or best.shape[1] < k:
        padded = np.full((rows, k), -np.inf, dtype=np.float32)
        if best is not None:
            padded[:, : best.shape[1]] = best
        best = padded
    threshold = best.min(axis=1)
    if floor is not None:
        threshold = np.maximum(threshold, floor)  # NaN stays NaN: every score of that row passes
    mask = np.less_equal(scores, threshold[:, None])
    np.logical_not(mask, out=mask)
    idx = np.flatnonzero(mask)
    del mask
    if not len(idx):
        return best
    row = idx // n
    counts = np.bincount(row, minlength=rows)
    most = int(counts.max())
    if most > n // 4:  # a row takes much of the tile (a first fold, a skewed tile): partition it whole
        return merge_top_scores(best, select_top(scores, k), k)
    merged = np.full((rows, k + most), -np.inf, dtype=np.float32)
    merged[:, :k] = best
    merged[row, k + np.arange(len(idx)) - (np.cumsum(counts) - counts)[row]] = scores.reshape(-1)[idx]
    return np.array(select_top(merged, k), copy=True)


def sort_descending(best: np.ndarray) -> np.ndarray:
    """Each row sorted from highest to lowest score (float32, C-contiguous; -0.0 written as 0.0, so
    equal multisets of values give equal bytes)."""
    out = np.ascontiguousarray(np.sort(best, axis=1)[:, ::-1], dtype=np.float32)
    out += np.float32(0)
    return out


class RunningTopScores:
    """The running top-``k`` scores of fixed query rows against database blocks fed in order.

    ``queries`` start at a global multiple of :data:`QUERY_TILE` (the caller's
    block boundary).  Database rows are cut into tiles at global multiples of
    :data:`DATABASE_TILE` counted from the first row fed, whatever the block
    sizes (a partial tile waits for the next block), and every (query tile,
    database tile) pair is one single-threaded GEMM followed by a threshold-filtered
    fold (:func:`fold_top_scores`): results are bit-identical however the database is split into
    blocks (in memory, streamed, sharded) and whatever the thread count.
    The pairs go to ``workers`` threads as each finishes its last (no thread waits on a
    slower one's share); each thread keeps its own running top-k, merged at the end: only
    values are kept, and the k largest of a multiset do not depend on the split.
    """

    def __init__(self, queries: np.ndarray, k: int, workers: int | None = None, groups: Sequence[int] | None = None):
        self.k = int(k)
        self.n = len(queries)
        self.workers = max(1, int(workers or selection_threads()))
        self.tiles = query_tiles(queries, groups)
        self._best: dict[int, list[np.ndarray | None]] = {}
        self._buffers: dict[int, np.ndarray] = {}
        self._floors: list[np.ndarray | None] = [None] * len(self.tiles)
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None

    def _mine(self) -> tuple[list[np.ndarray | None], np.ndarray]:
        """This thread's running top-k per query tile and its score buffer (made on its first pair)."""
        key = threading.get_ident()
        mine = self._best.get(key)
        if mine is None:
            with self._lock:
                mine = self._best.setdefault(key, [None] * len(self.tiles))
                self._buffers[key] = aligned_empty((QUERY_TILE * DATABASE_TILE,))
        return mine, self._buffers[key]

    def _fold_pair(self, pair: tuple[int, np.ndarray]) -> None:
        i, tile = pair
        best, buffer = self._mine()
        folded = fold_top_scores(best[i], tile_scores(self.tiles[i], tile, buffer), self.k, self._floors[i])
        best[i] = folded
        self._raise_floor(i, folded)

    def _raise_floor(self, i: int, best: np.ndarray) -> None:
        """Share this thread's k-th best of query tile ``i`` as a floor for every thread's next folds of it
        (a thread's first fold of a tile then filters instead of partitioning).  Any thread's k-th best
        bounds the final one from below, so a floor from any moment is valid; the lock only keeps
        raises from crossing."""
        if best.shape[1] < self.k:
            return
        kth = best.min(axis=1)
        with self._lock:
            floor = self._floors[i]
            if floor is None:
                self._floors[i] = kth
            else:
                self._floors[i] = np.fmax(floor, kth)

    def _fold_tiles(self, tiles: list[np.ndarray]) -> None:
        operands = [tile_operand(tile) for tile in tiles]  # no copy for aligned blocks (the sources' reads)
        pairs = [(i, tile) for tile in operands for i in range(len(self.tiles))]
        run_parallel(self._fold_pair, pairs, self.workers)

    def add(self, database: np.ndarray, last: bool = False) -> None:
        """Fold one database block (any number of rows; rows continue the previous block's).  ``last``:
        no block follows, so a final partial tile is folded in this pass, beside the full ones, rather
        than alone (one thread) by :meth:`result` (measured: 10% of a 5k x 60k bias step on 2 cores)."""
        database = np.asarray(database, dtype=np.float32)
        if not len(database):
            return
        tiles = []
        if self._pending is not None:
            need = DATABASE_TILE - len(self._pending)
            head = np.concatenate([self._pending, database[:need]])
            database = database[need:]
            self._pending = None
            if len(head) < DATABASE_TILE:
                self._pending = head
            else:
                tiles.append(head)
        full = len(database) // DATABASE_TILE * DATABASE_TILE
        tiles += [database[s : s + DATABASE_TILE] for s in range(0, full, DATABASE_TILE)]
        if full < len(database):
            if last:
                tiles.append(database[full:])
            else:
                self._pending = np.array(database[full:], dtype=np.float32, copy=True)
        elif last and self._pending is not None:
            tiles.append(self._pending)
            self._pending = None
        if tiles:
            self._fold_tiles(tiles)

    def result(self) -> np.ndarray:
        """(Q, k') float32 sorted descending (k' = k, or fewer if fewer database rows were folded)."""
        if self._pending is not None:
            self._fold_tiles([self._pending])
            self._pending = None
        if not self.n:
            return np.empty((0, self.k), dtype=np.float32)
        out = []
        for i in range(len(self.tiles)):
            merged: np.ndarray | None = None
            for best in self._best.values():
                tile_best = best[i]
                if tile_best is not None:
                    merged = merge_top_scores(merged, tile_best, self.k)
            assert merged is not None, "a query tile no worker folded"
            out.append(sort_descending(merged))
        return np.vstack(out)


def run_parallel(fn: Callable, items: list, workers: int | None = None) -> list:
    """``[fn(item) for item in items]``, on up to ``workers`` threads (default: :func:`selection_threads`),
    always with numpy's BLAS limited to one thread meanwhile (threadpoolctl), also for a single item:
    each GEMM is then the same single-threaded call wherever it runs, and the selection uses every core."""
    workers = min(len(items), max(1, int(workers or selection_threads())))
    with single_threaded_blas():
        if workers <= 1:
            return [fn(item) for item in items]
        return list(thread_pool(workers).map(fn, items))


def topk_scores(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    progress: ProgressFn | None = None,
    groups: Sequence[int] | None = None,
) -> np.ndarray:
    """(Q, k) float32: the ``k`` highest inner products of each query with ``database``, descending.

    Exact.  A plain GEMM per (query tile, database tile) of the global grid
    followed by an O(n) ``np.partition`` selection runs close to the machine's
    GEMM rate; measured here about 4-6x faster than ``IndexFlatIP.search`` at
    k=128, whose per-query heaps dominate for large k.  Only scores are kept,
    so there are no ties to break: equal scores are equal values.
    """
    database = tile_operand(np.asarray(database, dtype=np.float32))
    k = int(min(k, len(database)))
    if groups is not None:  # segments tiled on their own (see query_tiles): one pass over the database
        running = RunningTopScores(queries, k, groups=groups)
        running.add(database, last=True)
        return running.result()
    out = np.empty((len(queries), k), dtype=np.float32)
    step = QUERY_TILE * 8
    for start in range(0, len(queries), step):
        stop = min(len(queries), start + step)
        running = RunningTopScores(queries[start:stop], k)
        running.add(database, last=True)
        out[start:stop] = running.result()
        if progress:
            progress(stop, len(queries))
    return out


def score_rows(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(rows, N) float32 ``queries @ database.T`` for a block of query rows, one single-threaded GEMM per
    :data:`DATABASE_TILE` columns (global column tiles, dealt to the engine's threads): the same bytes
    for the same block whatever the thread count.  ``database`` should come from :func:`tile_operand`."""
    q = tile_operand(np.asarray(queries, dtype=np.float32), copy=True)
    out = np.empty((len(q), len(database)), dtype=np.float32)

    def one(start: int) -> None:
        out[:, start : start + DATABASE_TILE] = tile_scores(q, database[start : start + DATABASE_TILE])

    run_parallel(one, list(range(0, len(database), DATABASE_TILE)))
    return out
