"""The exact engine's selection: the threshold-filtered fold, the pairs dealt to threads, the BLAS limit.

The fold must keep exactly the multiset of values a full partition keeps (so the same bytes after the
final sort), whatever the ties, signed zeros, NaN, or how skewed a tile is; the engine must give the same
bytes whatever the thread count and the database blocking."""

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnn_cli.core import topk
from nnn_cli.core.topk import (
    DATABASE_TILE,
    RunningTopScores,
    fold_top_scores,
    merge_top_scores,
    select_top,
    single_threaded_blas,
    sort_descending,
    topk_scores,
)


def full_fold(best, scores, k):
    """The plain fold: partition the whole tile, then merge."""
    return merge_top_scores(best, select_top(np.array(scores, copy=True), k), k)


def same_bytes(a, b):
    return sort_descending(a).tobytes() == sort_descending(b).tobytes()


def tied_tile(rng, rows, cols, levels):
    """Scores on few distinct levels (ties at the k-th value are common), some of them -0.0."""
    tile = (rng.integers(-levels, levels + 1, size=(rows, cols)) / levels).astype(np.float32)
    tile[rng.random(tile.shape) < 0.05] = -0.0
    return tile


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 300),
    k=st.integers(1, 40),
    levels=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    folds=st.integers(1, 4),
)
def test_fold_keeps_the_multiset_of_a_full_partition(rows, cols, k, levels, seed, folds):
    """Few distinct levels make ties at the k-th value common; the fold equals the full partition's bytes."""
    rng = np.random.default_rng(seed)
    ours = theirs = None
    for _ in range(folds):
        tile = tied_tile(rng, rows, cols, levels)
        ours = fold_top_scores(ours, np.array(tile, copy=True), k)
        theirs = full_fold(theirs, tile, k)
    assert ours.shape == theirs.shape
    assert same_bytes(ours, theirs)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 200),
    k=st.integers(1, 30),
    levels=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
    tiles=st.integers(1, 8),
    shares=st.integers(1, 3),
)
def test_shares_of_one_query_tile_under_a_common_floor_keep_the_multiset(rows, cols, k, levels, seed, tiles, shares):
    """Tiles dealt at random to several running top-k (threads), each folding under the highest k-th best
    any of them holds so far: their merge has the bytes of one full partition of every tile, ties, signed
    zeros and NaN included."""
    rng = np.random.default_rng(seed)
    best: list = [None] * shares
    floor = None
    everything = []
    for _ in range(tiles):
        tile = tied_tile(rng, rows, cols, levels)
        tile[rng.random(tile.shape) < 0.01] = np.nan
        everything.append(tile)
        j = int(rng.integers(shares))
        best[j] = fold_top_scores(best[j], np.array(tile, copy=True), k, floor)
        if best[j].shape[1] == k:
            kth = best[j].min(axis=1)
            floor = kth if floor is None else np.fmax(floor, kth)
    merged = None
    for b in best:
        if b is not None:
            merged = merge_top_scores(merged, b, k)
    theirs = full_fold(None, np.hstack(everything), k)
    assert merged.shape == theirs.shape
    assert same_bytes(merged, theirs)


def test_a_floor_drops_what_cannot_enter_and_pads_a_first_fold():
    floor = np.array([2.0, 0.75], dtype=np.float32)
    tile = np.zeros((2, 16), dtype=np.float32)
    tile[:, :4] = [[1.0, 3.0, 2.0, 5.0], [1.0, 0.5, 2.0, 1.0]]
    out = sort_descending(fold_top_scores(None, tile, 3, floor))
    assert out.tolist() == [[5.0, 3.0, -np.inf], [2.0, 1.0, 1.0]]
    # a row taking much of the tile falls back to partitioning it whole (still the k largest)
    assert sort_descending(fold_top_scores(None, tile[:, :4], 3, floor)).tolist() == [[5.0, 3.0, 2.0], [2.0, 1.0, 1.0]]


def test_fold_by_hand():
    best = np.array([[5.0, 3.0, 4.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    tile = np.array([[3.0, 6.0, 2.0, 4.5], [1.0, 0.5, 2.0, 1.0]], dtype=np.float32)
    out = sort_descending(fold_top_scores(best, tile, 3))
    np.testing.assert_array_equal(out, [[6.0, 5.0, 4.5], [2.0, 1.0, 1.0]])


def test_fold_lets_nan_in_as_a_partition_ranks_it():
    """NaN (inner products overflowing both ways) must reach the top-k, where the bias refuses it."""
    best = np.full((2, 4), 0.5, dtype=np.float32)
    tile = np.zeros((2, 64), dtype=np.float32)
    tile[1, 7] = np.nan
    out = fold_top_scores(best, tile, 4)
    assert np.isnan(out[1]).sum() == 1 and not np.isnan(out[0]).any()
    assert np.isnan(full_fold(best, tile, 4)[1]).sum() == 1


def test_fold_of_a_skewed_tile_falls_back_to_the_partition():
    """A row whose every score beats its k-th best (the first tiles of a row's cluster) still folds right."""
    rng = np.random.default_rng(3)
    best = np.full((3, 8), -5.0, dtype=np.float32)
    tile = rng.standard_normal((3, 512)).astype(np.float32)
    assert same_bytes(fold_top_scores(best, tile, 8), full_fold(best, tile, 8))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_engine_bytes_do_not_depend_on_threads_or_blocking(workers):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1500, 16)).astype(np.float32)
    db = rng.standard_normal((3 * DATABASE_TILE + 777, 16)).astype(np.float32)
    one = topk_scores(q, db, 50)
    for cuts in ([db.shape[0]], [5000, 11000, 20000], [DATABASE_TILE, 2 * DATABASE_TILE + 1]):
        running = RunningTopScores(q, 50, workers=workers)
        start = 0
        for stop in [*cuts, len(db)]:
            running.add(db[start:stop], last=stop == len(db))
            start = stop
        assert running.result().tobytes() == one.tobytes()
    exact = -np.sort(-(q @ db.T), axis=1)[:, :50]
    np.testing.assert_allclose(one, exact, rtol=1e-5, atol=1e-5)


def test_a_reused_score_buffer_gives_the_bytes_of_a_fresh_tile():
    """The engine writes each tile's scores into its thread's buffer: the same GEMM, the same bytes, for a
    full tile and for a partial one after it (no value of the previous tile left in the result)."""
    rng = np.random.default_rng(3)
    q = topk.tile_operand(rng.standard_normal((topk.QUERY_TILE, 64)).astype(np.float32), copy=True)
    buffer = topk.aligned_empty((topk.QUERY_TILE * DATABASE_TILE,))
    buffer.fill(np.nan)
    with single_threaded_blas():
        for rows in (DATABASE_TILE, 777, DATABASE_TILE - 1, 1):
            db = topk.tile_operand(rng.standard_normal((rows, 64)).astype(np.float32))
            for tile in (q, q[:300]):
                got = topk.tile_scores(tile, db, buffer)
                assert got.shape == (len(tile), rows) and got.flags.c_contiguous
                assert np.shares_memory(got, buffer)
                assert got.tobytes() == topk.tile_scores(tile, db).tobytes()


def blas_threads():
    """Threads of numpy's own BLAS (the one the tiles use; faiss may load another after the limit was set)."""
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i["filepath"]}


def test_blas_limit_holds_until_the_last_overlapping_user_leaves():
    """The main thread holds the limit (as the exact bias step does); a thread beside it (the leak sketch)
    enters and leaves its own: its leaving must not lift the limit under the main thread's tiles."""
    before = blas_threads()
    inside = []

    def beside():
        with single_threaded_blas():
            inside.append(blas_threads())

    with single_threaded_blas():
        t = threading.Thread(target=beside)
        t.start()
        t.join(timeout=30)
        after_beside = blas_threads()
        assert topk._LIMIT_USERS == 1
    assert inside == [{1}] and after_beside == {1}
    assert blas_threads() == before
    assert topk._LIMIT_USERS == 0


@pytest.mark.parametrize("workers", [1, 3])
def test_kmeans_assignment_by_tiles_is_the_argmax_whatever_the_threads(workers):
    """k-means assigns rows by single-threaded GEMM tiles on the engine's threads: every row's best
    centroid, the same labels for any thread count."""
    from nnn_cli.core.kmeans import assign

    rng = np.random.default_rng(5)
    points = rng.standard_normal((20_000, 12)).astype(np.float32)
    centroids = rng.standard_normal((700, 12)).astype(np.float32)
    topk.set_workers(workers)
    try:
        labels, best = assign(points, centroids)
    finally:
        topk.set_workers(None)
    scores = (points.astype(np.float64) @ centroids.T.astype(np.float64)).astype(np.float32)
    top2 = -np.sort(-scores, axis=1)[:, :2]
    clear = top2[:, 0] - top2[:, 1] > 1e-4  # rows whose best centroid no rounding can change
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(labels[clear], scores.argmax(axis=1)[clear])
    np.testing.assert_allclose(best, scores.max(axis=1), rtol=1e-5, atol=1e-5)
    again, _ = assign(points, centroids)  # the default thread count: the same labels
    np.testing.assert_array_equal(again, labels)
