"""``ray_bias``: the Python entry of a bias run folder computed by Ray tasks (the blocked pipeline of
:mod:`nnn_cli.scale.pipeline` with a :class:`~nnn_cli.scale.scheduler.RayScheduler` and a run-folder sink)."""

from __future__ import annotations

from nnn_cli.core.topk import ProgressFn
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.sinks import RunFolderSink
from nnn_cli.data.sources import check_metric
from nnn_cli.scale.grid import bias_plan
from nnn_cli.scale.pipeline import BiasParams, index_plan, index_spec, run_bias
from nnn_cli.scale.ray.scheduler import RayScheduler


def ray_bias(
    gallery_url,
    reference_url,
    alpha: float,
    k: int,
    metric: str,
    output_url: str,
    *,
    address: str | None = None,
    resume: bool = False,
    gpus_per_task: float = 0,
    block_rows: int | None = None,
    partition_rows: int | None = None,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    storage_options: dict | None = None,
    save_topk: bool = True,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
    io_timeout: float | None = None,
    max_blocks_in_flight: int | None = None,
    index: dict | None = None,
    _task_delay: float = 0.0,
) -> dict:
    """NNN bias of every gallery row, as Ray tasks; writes the run folder ``output_url`` (manifest + blocks).

    Exact by default; ``index={"index": "ivf"|"hnsw"|"auto"|FACTORY, "nlist", "nprobe", "ef_search",
    "recall"}`` builds one index over the reference on the driver, keeps it as ``OUT/index.faiss`` and ships
    it to the tasks once.  ``resume=True`` keeps the verified blocks of an interrupted run.  Returns the run's
    figures (:meth:`nnn_cli.scale.pipeline.RunStats.as_dict`)."""
    from nnn_cli.core.nnn import check_alpha, check_k

    so = dict(storage_options or {})
    check_metric(metric)
    alpha = check_alpha(alpha)
    gallery = open_embeddings(gallery_url, "gallery", storage_options=so)
    reference = open_embeddings(reference_url, "reference", storage_options=so)
    check_same_dim(gallery, reference)
    k = check_k(k, reference.n)
    spec = index_spec(index, gallery, reference, k)
    if spec is None:
        plan = bias_plan(gallery.n, reference.n, block_rows, partition_rows)
    else:
        plan = index_plan(gallery.n, reference.n, block_rows, spec.choice.kind)
    scheduler = RayScheduler(
        address,
        gpus_per_task,
        max_retries,
        num_cpus,
        num_gpus,
        init_kwargs,
        max_in_flight=max_blocks_in_flight,
        io_timeout=io_timeout,
    )
    sink = RunFolderSink(str(output_url), so)
    stats = run_bias(
        gallery,
        reference,
        BiasParams(alpha, k, metric, bool(save_topk)),
        plan,
        scheduler,
        sink,
        resume=resume,
        gpus=bool(gpus_per_task),
        index=spec,
        progress=progress,
        delay=_task_delay,
    )
    return {"output": str(output_url), **stats.as_dict()}
