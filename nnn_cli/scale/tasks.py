"""The per-block computations of a blocked run: pure functions of their arguments, the same on every scheduler.

Each compute part runs the local engine itself (:mod:`nnn_cli.core.topk`) on one thread over its tiles of the
global grid, so merged results are byte-identical to the in-memory engine.  Sources and sinks are passed in
(picklable: :mod:`nnn_cli.data.contracts`); a part reads only its rows, a merge writes its block through the
sink when the sink writes from tasks (a run folder), or returns the arrays for the driver (a bias file).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import numpy as np

from nnn_cli.core.nnn import bias_from_topk
from nnn_cli.core.search import augment_gallery, augment_queries
from nnn_cli.core.topk import (
    GemmIndex,
    RunningTopScores,
    merge_top_k,
    merge_top_scores,
    search_blocks,
    set_workers,
    sort_descending,
)
from nnn_cli.scale.grid import STREAM_ROWS


def task_info(t0: float, nbytes: int) -> dict:
    """Where and how long a task ran (reported, never checked)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "t0": t0,
        "t1": time.time(),
        "seconds": time.time() - t0,
        "bytes_read": int(nbytes),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def use_cuda(gpus: float) -> bool:
    if not gpus:
        return False
    from nnn_cli.scale.device import torch_cuda

    return torch_cuda()


def _bytes_read(*sources: Any) -> int:
    return int(sum(getattr(s, "bytes_read", 0) for s in sources))


def _reset_bytes(*sources: Any) -> None:
    for s in sources:
        if hasattr(s, "bytes_read"):
            s.bytes_read = 0


def fingerprint_task(source: Any, start: int, stop: int) -> str:
    """Content hash of rows ``[start, stop)`` (:meth:`~nnn_cli.data.contracts.Source.fingerprint_rows`)."""
    return source.fingerprint_rows(start, stop)


def first(value: Any) -> Any:
    """The merge of a one-part task: its result."""
    return value


def partial_topk_task(
    gallery: Any,
    g0: int,
    g1: int,
    reference: Any,
    r0: int,
    r1: int,
    k: int,
    metric: str,
    gpus: float = 0,
    delay: float = 0.0,
) -> tuple[np.ndarray, dict]:
    """Top-``k`` score values of gallery rows ``[g0, g1)`` against reference rows ``[r0, r1)``.

    CPU: single-threaded BLAS, one GEMM per (1024-row gallery tile, 8192-row reference tile) at global
    tile coordinates, as :class:`nnn_cli.core.topk.RunningTopScores` does.  With a GPU (``gpus > 0`` and torch
    sees CUDA): torch matmul + topk per streamed chunk (fast, not bit-identical to the CPU path).
    """
    t0 = time.time()
    if delay:
        time.sleep(delay)  # tests only: widen the window in which a worker or the driver is killed
    _reset_bytes(gallery, reference)
    cuda = use_cuda(gpus)
    g = gallery.rows(g0, g1, metric)
    if cuda:
        from nnn_cli.scale.device import cuda_topk_scores

        best = None
        for s in range(r0, r1, STREAM_ROWS):
            chunk = reference.rows(s, min(r1, s + STREAM_ROWS), metric)
            best = merge_top_scores(best, cuda_topk_scores(g, chunk, k), k)
        assert best is not None
        values = best
    else:
        running = RunningTopScores(g, k, workers=1)
        for s in range(r0, r1, STREAM_ROWS):
            running.add(reference.rows(s, min(r1, s + STREAM_ROWS), metric))
        values = running.result()
    info = task_info(t0, _bytes_read(gallery, reference))
    info.update(block=(g0, g1), partition=(r0, r1), cuda=cuda, flop=2.0 * (g1 - g0) * (r1 - r0) * g.shape[1])
    return values, info


def _finish_block(sink: Any, block: int, rows: tuple[int, int], arrays: dict, t0: float, infos: list) -> dict:
    out: dict = {"block": block, "rows": list(rows), "tasks": infos}
    if sink.remote_writes:
        out["record"] = sink.put_block(block, rows, arrays)
    else:
        out["arrays"] = arrays
    out["merge_seconds"] = time.time() - t0
    out["bias_sum"] = float(arrays["bias"].astype(np.float64).sum())
    return out


def merge_bias_task(
    block: int, g0: int, g1: int, alpha: float, k: int, sink: Any, save_topk: bool, *partials: tuple
) -> dict:
    """Merge the partials of one gallery block into its top-k and bias; store them through ``sink``."""
    t0 = time.time()
    merged = None
    for values, _ in partials:
        merged = merge_top_scores(merged, values, k)
    assert merged is not None
    topk = sort_descending(merged)
    arrays = {"bias": bias_from_topk(topk, alpha, k)}
    if save_topk:
        arrays["topk"] = topk
    return _finish_block(sink, block, (g0, g1), arrays, t0, [info for _, info in partials])


def merge_update_task(
    block: int, g0: int, g1: int, alpha: float, k: int, sink: Any, old: Any, *partials: tuple
) -> dict:
    """Merge a block's stored (verified) top-k with its top-k against new reference queries; the new bias and
    top-k go under the sink's new generation's names (the manifest, rewritten at the end, is the commit)."""
    t0 = time.time()
    merged = sink.read_block(old, "topk", k)
    for values, _ in partials:
        merged = merge_top_scores(merged, values, k)
    topk = sort_descending(merged)
    arrays = {"bias": bias_from_topk(topk, alpha, k), "topk": topk}
    return _finish_block(sink, block, (g0, g1), arrays, t0, [info for _, info in partials])


# the index each worker process deserialized, by key (one deserialization per worker and index)
_WORKER_INDEX: dict = {}
# keys deserialized by this process (tests count them)
DESERIALIZED: list = []


def worker_index(key: str, blob: np.ndarray) -> Any:
    """The faiss index serialized in ``blob`` (uint8), deserialized once per worker process and cached."""
    index = _WORKER_INDEX.get(key)
    if index is None:
        DESERIALIZED.append(key)
        from nnn_cli.scale.device import faiss_module

        index = faiss_module().deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
        _WORKER_INDEX.clear()
        _WORKER_INDEX[key] = index
    return index


def index_topk_task(
    key: str,
    blob: np.ndarray,
    gallery: Any,
    g0: int,
    g1: int,
    reference: Any,
    k: int,
    metric: str,
    delay: float = 0.0,
    probing: dict | None = None,
) -> tuple[np.ndarray, dict]:
    """Top-``k`` of gallery rows ``[g0, g1)`` through the shipped index, on one thread (IVF-Flat probed
    list-major at the same row grid as locally: ``g0`` is a multiple of 4096); rows whose probed lists hold
    fewer than k vectors are recomputed exactly against ``reference``.  ``probing``: the driver's tuned probe
    gap (:func:`~nnn_cli.scale.index.steps.probe_rule`), else the index's nprobe."""
    from nnn_cli.scale.device import faiss_module
    from nnn_cli.scale.index.steps import approximate_reference_topk
    from nnn_cli.scale.streaming import topk_scores_vs

    t0 = time.time()
    if delay:
        time.sleep(delay)
    set_workers(1)
    faiss_module().omp_set_num_threads(1)
    before = len(DESERIALIZED)
    index = worker_index(key, blob)
    _reset_bytes(gallery, reference)
    g = gallery.rows(g0, g1, metric)
    topk, short = approximate_reference_topk(
        index, g, lambda rows, groups: topk_scores_vs(rows, reference, k, metric, groups), k, probing=probing
    )
    info = task_info(t0, _bytes_read(gallery, reference))
    info.update(
        block=(g0, g1),
        partition=None,
        cuda=False,
        flop=0.0,
        index_deserialized=len(DESERIALIZED) > before,
        rows_recomputed_exactly=int(short),
    )
    return topk, info


def partial_search_task(
    queries: Any,
    q0: int,
    q1: int,
    gallery: Any,
    r0: int,
    r1: int,
    bias: np.ndarray | None,
    top_k: int,
    metric: str,
    gpus: float = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(scores, global indices) top-``top_k`` of query rows ``[q0, q1)`` in gallery rows ``[r0, r1)``.

    The local engine itself (:class:`nnn_cli.core.topk.GemmIndex`) on one thread over this partition: the
    same tiles of the global grid (q0 and r0 are tile multiples), ties to the lower index; merging the
    partitions by (score desc, index asc) gives the local result byte for byte.
    """
    t0 = time.time()
    _reset_bytes(queries, gallery)
    set_workers(1)
    q = queries.rows(q0, q1, metric)
    g = gallery.rows(r0, r1, metric)
    if bias is not None:
        q, g = augment_queries(q), augment_gallery(g, bias)
    scores, idx = search_blocks(GemmIndex(g), q, min(int(top_k), len(g)))
    info = task_info(t0, _bytes_read(queries, gallery))
    info.update(block=(q0, q1), partition=(r0, r1))
    return scores, idx + r0, info


def merge_search_task(top_k: int, *parts: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-partition (scores, indices, info) into the top-``top_k`` by score descending, index ascending."""
    merged = None
    for scores, idx, _ in parts:
        merged = merge_top_k(merged, (scores, idx), top_k)
    assert merged is not None
    return merged


__all__ = [
    "fingerprint_task",
    "first",
    "index_topk_task",
    "merge_bias_task",
    "merge_search_task",
    "merge_update_task",
    "partial_search_task",
    "partial_topk_task",
    "task_info",
    "use_cuda",
    "worker_index",
]
