"""``ray_append`` / ``ray_add_reference``: the Python entries of ``--append-to`` / ``--update --reference-add``
on a run folder with Ray tasks (:func:`nnn_cli.scale.pipeline.run_append` / ``run_add_reference``)."""

from __future__ import annotations

from functools import partial

from nnn_cli.core.topk import ProgressFn
from nnn_cli.data.inputs import open_embeddings
from nnn_cli.data.locks import DEFAULT_WAIT
from nnn_cli.data.sinks import RunFolderSink
from nnn_cli.scale.pipeline import run_add_reference, run_append
from nnn_cli.scale.ray.scheduler import RayScheduler


def _opener(so: dict):
    return partial(_open, so=so)


def _open(path: str, label: str, so: dict):
    return open_embeddings(path, label, storage_options=so)


def ray_append(
    new_items_url,
    reference_url,
    run_url: str,
    *,
    alpha: float | None = None,
    k: int | None = None,
    metric: str | None = None,
    address: str | None = None,
    gpus_per_task: float = 0,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    storage_options: dict | None = None,
    wait: float = DEFAULT_WAIT,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
    io_timeout: float | None = None,
) -> dict:
    """Append new gallery rows to a finished exact run as new blocks (under the folder's lock when local)."""
    so = dict(storage_options or {})
    sink = RunFolderSink(str(run_url), so)
    scheduler = RayScheduler(
        address, gpus_per_task, max_retries, num_cpus, num_gpus, init_kwargs, io_timeout=io_timeout
    )
    with sink.lock(wait):
        new = open_embeddings(new_items_url, "new gallery items", storage_options=so)
        reference = open_embeddings(reference_url, "reference", storage_options=so)
        out = run_append(
            new,
            reference,
            _opener(so),
            sink,
            scheduler,
            alpha=alpha,
            k=k,
            metric=metric,
            gpus=bool(gpus_per_task),
            progress=progress,
        )
    return {"output": str(run_url), "operation": "append", **out}


def ray_add_reference(
    gallery_url,
    new_reference_url,
    run_url: str,
    *,
    alpha: float | None = None,
    k: int | None = None,
    metric: str | None = None,
    address: str | None = None,
    gpus_per_task: float = 0,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    storage_options: dict | None = None,
    wait: float = DEFAULT_WAIT,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
    io_timeout: float | None = None,
) -> dict:
    """Fold new reference queries into a finished exact run saved with top-k (under the folder's lock when local)."""
    so = dict(storage_options or {})
    sink = RunFolderSink(str(run_url), so)
    scheduler = RayScheduler(
        address, gpus_per_task, max_retries, num_cpus, num_gpus, init_kwargs, io_timeout=io_timeout
    )
    with sink.lock(wait):
        gallery = open_embeddings(gallery_url, "gallery", storage_options=so)
        new = open_embeddings(new_reference_url, "new reference queries", storage_options=so)
        out = run_add_reference(
            gallery,
            _opener(so),
            new,
            sink,
            scheduler,
            alpha=alpha,
            k=k,
            metric=metric,
            gpus=bool(gpus_per_task),
            progress=progress,
        )
    return {"output": str(run_url), "operation": "reference-add", **out}
