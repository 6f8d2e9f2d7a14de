"""`nnn search --engine ray`: query blocks x gallery partitions as Ray tasks, merged by (score desc, index asc)."""

from __future__ import annotations

import os

import numpy as np

from nnn_cli.core.topk import DATABASE_TILE, DEFAULT_QUERY_BLOCK, QUERY_TILE, ProgressFn
from nnn_cli.data.manifest import read_manifest_bias
from nnn_cli.data.sources import check_metric
from nnn_cli.errors import MismatchError, ParameterError
from nnn_cli.scale.ray.cluster import DEFAULT_IO_TIMEOUT
from nnn_cli.scale.ray.session import _round_up, make_plan, open_input, ray_session, task_options
from nnn_cli.scale.ray.tasks import merge_search, partial_search_task

DEFAULT_BLOCK_ROWS = 64 * QUERY_TILE  # 65,536 gallery rows per task
DEFAULT_PARTITION_ROWS = 128 * DATABASE_TILE  # 1,048,576 reference rows per task
STREAM_ROWS = 8 * DATABASE_TILE  # reference rows fetched per ranged read inside a task


# ---------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------
def ray_search(
    queries_url,
    gallery_url,
    bias,
    top_k: int,
    metric: str = "cosine",
    *,
    address: str | None = None,
    gpus_per_task: float = 0,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    storage_options: dict | None = None,
    num_cpus: int | None = None,
    init_kwargs: dict | None = None,
    io_timeout: float = DEFAULT_IO_TIMEOUT,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` gallery rows per query by ``q.r - b(r)`` (plain ``q.r`` when ``bias`` is None), as Ray
    tasks over query blocks x gallery partitions.  ``bias``: an array, a manifest folder/URL, or None.
    Returns (scores, indices) like :func:`nnn_cli.search.search`."""
    check_metric(metric)
    so = dict(storage_options or {})
    queries = open_input(queries_url, so, "queries")
    gallery = open_input(gallery_url, so, "gallery")
    if queries.dim != gallery.dim:
        raise MismatchError(f"dimension mismatch: queries d={queries.dim}, gallery d={gallery.dim}")
    if isinstance(bias, (str, os.PathLike)):
        bias = read_manifest_bias(bias, so).bias
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float32)
        if bias.shape != (gallery.n,):
            raise MismatchError(
                f"bias has {bias.shape[0] if bias.ndim else 0} entries but the gallery has {gallery.n} rows"
            )
    if int(top_k) < 1:
        raise ParameterError(f"top_k must be >= 1, got {top_k}")
    top_k = min(int(top_k), gallery.n)
    plan = make_plan(
        queries.n,
        gallery.n,
        min(block_rows, _round_up(queries.n, DEFAULT_QUERY_BLOCK)),
        min(partition_rows, _round_up(gallery.n, DATABASE_TILE)),
        block_multiple=DEFAULT_QUERY_BLOCK,
    )
    scores = np.empty((queries.n, top_k), dtype=np.float32)
    indices = np.empty((queries.n, top_k), dtype=np.int64)
    with ray_session(address, num_cpus, None, init_kwargs, io_timeout=io_timeout) as ray:
        fn = ray.remote(partial_search_task).options(**task_options(max_retries, gpus_per_task))
        q_ref, g_ref = ray.put(queries), ray.put(gallery)
        b_refs = [None if bias is None else ray.put(bias[r0:r1]) for r0, r1 in plan.partitions]
        futures = {}
        for bi, (q0, q1) in enumerate(plan.blocks):
            futures[bi] = [
                fn.remote(q_ref, q0, q1, g_ref, r0, r1, b_refs[pi], top_k, metric, gallery.n, gpus_per_task)
                for pi, (r0, r1) in enumerate(plan.partitions)
            ]
        for done, (bi, refs) in enumerate(futures.items(), 1):
            q0, q1 = plan.blocks[bi]
            parts = [(s, i) for s, i, _ in ray.get(refs)]
            scores[q0:q1], indices[q0:q1] = merge_search(parts, top_k)
            if progress:
                progress(done, len(plan.blocks))
    return scores, indices
