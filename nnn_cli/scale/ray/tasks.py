"""The Ray tasks of `--engine ray` (plain functions, wrapped with ``ray.remote`` at submission).  Each runs
the local engine itself (:mod:`nnn_cli.core.topk`) on one thread over its tiles of the global grid, so the
merged results are byte-identical to `--engine local`."""

from __future__ import annotations

import time

import numpy as np

from nnn_cli.core.nnn import bias_from_topk
from nnn_cli.core.search import augment_gallery, augment_queries
from nnn_cli.core.topk import (
    DATABASE_TILE,
    QUERY_TILE,
    GemmIndex,
    RunningTopScores,
    merge_top_k,
    merge_top_scores,
    search_blocks,
    sort_descending,
)
from nnn_cli.data import objstore
from nnn_cli.errors import InputError
from nnn_cli.scale.ray.session import _task_info, _use_cuda

DEFAULT_BLOCK_ROWS = 64 * QUERY_TILE  # 65,536 gallery rows per task
DEFAULT_PARTITION_ROWS = 128 * DATABASE_TILE  # 1,048,576 reference rows per task
STREAM_ROWS = 8 * DATABASE_TILE  # reference rows fetched per ranged read inside a task


def partial_topk_task(
    gallery, g0: int, g1: int, reference, r0: int, r1: int, k: int, metric: str, gpus: float = 0, delay: float = 0.0
):
    """Top-``k`` score values of gallery rows ``[g0, g1)`` against reference rows ``[r0, r1)``.

    CPU: single-threaded BLAS, one GEMM per (1024-row gallery tile, 8192-row reference tile) at global
    tile coordinates, as :class:`nnn_cli.core.topk.RunningTopScores` does.  With a GPU (``gpus > 0`` and torch
    sees CUDA): torch matmul + topk per streamed chunk (fast, not bit-identical to the CPU path).
    """
    t0 = time.time()
    if delay:
        time.sleep(delay)  # tests only: widen the window in which a worker or the driver is killed
    gallery.bytes_read = reference.bytes_read = 0
    cuda = _use_cuda(gpus)
    g = gallery.rows(g0, g1, metric)
    if cuda:
        from nnn_cli.scale.device import cuda_topk_scores

        best = None
        for s in range(r0, r1, STREAM_ROWS):
            best = merge_top_scores(
                best, cuda_topk_scores(g, reference.rows(s, min(r1, s + STREAM_ROWS), metric), k), k
            )
        values = best
    else:
        # the local engine itself, on one thread: the same 1024 x 8192 tiles of the global grid (g0 and
        # r0 are tile multiples), the same single-threaded GEMMs, values merged: byte-identical to local
        running = RunningTopScores(g, k, workers=1)
        for s in range(r0, r1, STREAM_ROWS):
            running.add(reference.rows(s, min(r1, s + STREAM_ROWS), metric))
        values = running.result()
    info = _task_info(t0, gallery.bytes_read + reference.bytes_read)
    info.update(block=(g0, g1), partition=(r0, r1), cuda=cuda, flop=2.0 * (g1 - g0) * (r1 - r0) * g.shape[1])
    return values, info


def merge_bias_task(
    block: int,
    g0: int,
    g1: int,
    alpha: float,
    k: int,
    output_url: str,
    storage_options: dict,
    save_topk: bool,
    *partials,
):
    """Merge the partials of one gallery block, write its bias (and top-k) file, return its record."""
    t0 = time.time()
    merged: np.ndarray | None = None
    for values, _ in partials:
        merged = merge_top_scores(merged, values, k)
    assert merged is not None, "no partials to merge"
    topk = sort_descending(merged)
    bias = bias_from_topk(topk, alpha, k)
    objstore.write_npy(objstore.join(output_url, "blocks", f"bias_{block:06d}.npy"), bias, storage_options)
    if save_topk:
        objstore.write_npy(objstore.join(output_url, "blocks", f"topk_{block:06d}.npy"), topk, storage_options)
    tasks = [info for _, info in partials]
    return {
        "block": block,
        "rows": [g0, g1],
        "merge_seconds": time.time() - t0,
        "tasks": tasks,
        "bias_sum": float(bias.astype(np.float64).sum()),
    }


# the index each worker process deserialized, by key (one deserialization per worker and index)
_WORKER_INDEX: dict = {}
# keys deserialized by this process (tests count them)
_DESERIALIZED: list = []


def worker_index(key: str, blob: np.ndarray):
    """The faiss index serialized in ``blob`` (uint8), deserialized once per worker process and cached."""
    index = _WORKER_INDEX.get(key)
    if index is None:
        _DESERIALIZED.append(key)
        from nnn_cli.scale.device import faiss_module

        index = faiss_module().deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
        _WORKER_INDEX.clear()
        _WORKER_INDEX[key] = index
    return index


def index_bias_task(
    key: str,
    blob: np.ndarray,
    block: int,
    *,
    gallery,
    g0: int,
    g1: int,
    reference,
    k: int,
    metric: str,
    alpha: float,
    output_url: str,
    storage_options: dict,
    save_topk: bool,
    delay: float = 0.0,
) -> dict:
    """Top-``k`` of gallery rows ``[g0, g1)`` through the shipped index, on one thread (IVF-Flat probed
    list-major at the same row grid as locally: ``g0`` is a multiple of 4096), then bias and files.

    Rows whose probed lists hold fewer than k vectors are recomputed exactly against ``reference``."""
    from nnn_cli.core.topk import set_workers
    from nnn_cli.scale.device import faiss_module
    from nnn_cli.scale.index.steps import approximate_reference_topk
    from nnn_cli.scale.streaming import topk_scores_vs

    t0 = time.time()
    if delay:
        time.sleep(delay)
    set_workers(1)
    faiss_module().omp_set_num_threads(1)
    before = len(_DESERIALIZED)
    index = worker_index(key, blob)
    deserialized = len(_DESERIALIZED) > before
    gallery.bytes_read = reference.bytes_read = 0
    g = gallery.rows(g0, g1, metric)
    topk, short = approximate_reference_topk(index, g, lambda rows: topk_scores_vs(rows, reference, k, metric), k)
    bias = bias_from_topk(topk, alpha, k)
    objstore.write_npy(objstore.join(output_url, "blocks", f"bias_{block:06d}.npy"), bias, storage_options)
    if save_topk:
        objstore.write_npy(objstore.join(output_url, "blocks", f"topk_{block:06d}.npy"), topk, storage_options)
    info = _task_info(t0, gallery.bytes_read + reference.bytes_read)
    info.update(block=(g0, g1), partition=None, cuda=False, flop=0.0, index_deserialized=deserialized)
    return {
        "block": block,
        "rows": [g0, g1],
        "merge_seconds": 0.0,
        "tasks": [info],
        "rows_recomputed_exactly": int(short),
        "bias_sum": float(bias.astype(np.float64).sum()),
    }


def partial_search_task(
    queries, q0: int, q1: int, gallery, r0: int, r1: int, bias, top_k: int, metric: str, n_gallery: int, gpus: float = 0
):
    """(scores, global indices) top-``top_k`` of query rows ``[q0, q1)`` in gallery rows ``[r0, r1)``.

    The local engine itself (:class:`nnn_cli.core.topk.GemmIndex`) on one thread over this partition: the
    same tiles of the global grid (q0 and r0 are tile multiples), ties to the lower index; merging the
    partitions by (score desc, index asc) gives the local result byte for byte.
    """
    from nnn_cli.core.topk import set_workers

    t0 = time.time()
    queries.bytes_read = gallery.bytes_read = 0
    set_workers(1)
    q = queries.rows(q0, q1, metric)
    g = gallery.rows(r0, r1, metric)
    if bias is not None:
        q, g = augment_queries(q), augment_gallery(g, bias)
    scores, idx = search_blocks(GemmIndex(g), q, min(int(top_k), len(g)))
    info = _task_info(t0, queries.bytes_read + gallery.bytes_read)
    info.update(block=(q0, q1), partition=(r0, r1))
    return scores, idx + r0, info


def merge_search(parts: list[tuple[np.ndarray, np.ndarray]], top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-partition (scores, indices) into the top-``top_k`` by score descending, index ascending."""
    merged: tuple[np.ndarray, np.ndarray] | None = None
    for part in parts:
        merged = merge_top_k(merged, part, top_k)
    assert merged is not None, "no partitions to merge"
    return merged


# ---------------------------------------------------------------------------
# Incremental: --append-to (new gallery rows as new blocks), --update --reference-add (new queries)
# ---------------------------------------------------------------------------
def merge_update_task(
    block: int,
    g0: int,
    g1: int,
    alpha: float,
    k: int,
    output_url: str,
    storage_options: dict,
    old_topk_file: str,
    bias_file: str,
    topk_file: str,
    *partials,
):
    """Merge a block's stored top-k with its top-k against the new reference queries; write the block's
    new bias and top-k under new names (the manifest, rewritten once at the end, is the commit)."""
    t0 = time.time()
    merged = objstore.read_npy(objstore.join(output_url, old_topk_file), storage_options)
    if merged.shape != (g1 - g0, k):
        raise InputError(f"{output_url}/{old_topk_file}: shape {merged.shape}, expected {(g1 - g0, k)}")
    for values, _ in partials:
        merged = merge_top_scores(merged, values, k)
    topk = sort_descending(merged)
    bias = bias_from_topk(topk, alpha, k)
    objstore.write_npy(objstore.join(output_url, bias_file), bias, storage_options)
    objstore.write_npy(objstore.join(output_url, topk_file), topk, storage_options)
    return {
        "block": block,
        "rows": [g0, g1],
        "merge_seconds": time.time() - t0,
        "tasks": [info for _, info in partials],
    }
