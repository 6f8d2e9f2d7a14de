"""``ray_search``: debiased search as Ray tasks (:func:`nnn_cli.scale.pipeline.run_search`)."""

from __future__ import annotations

import os

import numpy as np

from nnn_cli.core.topk import ProgressFn
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.manifest import load_bias
from nnn_cli.data.sources import check_metric
from nnn_cli.errors import ParameterError
from nnn_cli.scale.pipeline import run_search, search_plan
from nnn_cli.scale.ray.scheduler import RayScheduler


def ray_search(
    queries_url,
    gallery_url,
    bias,
    top_k: int,
    metric: str = "cosine",
    *,
    address: str | None = None,
    gpus_per_task: float = 0,
    block_rows: int | None = None,
    partition_rows: int | None = None,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    storage_options: dict | None = None,
    num_cpus: int | None = None,
    init_kwargs: dict | None = None,
    io_timeout: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` gallery rows per query by ``q.r - b(r)`` (plain ``q.r`` when ``bias`` is None), as Ray
    tasks.  ``bias``: an array, a bias file or run folder/URL, or None.  Returns (scores, indices)."""
    check_metric(metric)
    so = dict(storage_options or {})
    queries = open_embeddings(queries_url, "queries", storage_options=so)
    gallery = open_embeddings(gallery_url, "gallery", storage_options=so)
    check_same_dim(queries, gallery)
    if isinstance(bias, (str, os.PathLike)):
        bias = load_bias(bias, so).bias
    if int(top_k) < 1:
        raise ParameterError(f"top_k must be >= 1, got {top_k}")
    b = None if bias is None else np.asarray(bias, dtype=np.float32)
    plan = search_plan(queries.n, gallery.n, block_rows, partition_rows)
    scheduler = RayScheduler(address, gpus_per_task, max_retries, num_cpus, None, init_kwargs, io_timeout=io_timeout)
    return run_search(queries, gallery, b, top_k, metric, plan, scheduler, gpus=bool(gpus_per_task), progress=progress)
