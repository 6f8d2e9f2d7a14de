"""How a bias or search run is carried out: the one place that turns the engine and output options into a
scheduler, a sink and a plan (jobs call these and never name an engine or a store).

* :func:`bias_sink`: the output as a sink: a run folder (a URL, or a name without a file suffix) or a bias
  file (``.h5``/``.npy``);
* :func:`compute_bias`: with a run folder, ``--engine ray``, ``--resume`` or ``--block-rows``, the blocked
  pipeline (:mod:`nnn_cli.scale.pipeline`) on the scheduler of :func:`~nnn_cli.scale.scheduler.make_scheduler`;
  otherwise the in-memory plan (:mod:`nnn_cli.scale.plan`: exact in memory, streamed, indexed or on a GPU),
  committed through the same bias-file sink;
* :func:`grow_bias`: ``--append-to`` / ``--update --reference-add``: a run folder through the pipeline, an
  HDF5 bias file in memory (:mod:`nnn_cli.scale.incremental`) under its lock;
* :func:`search_topk`: blocked (``--engine ray``) or the in-memory search plan.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnn_cli.core.topk import ProgressFn, single_threaded_blas
from nnn_cli.data.readahead import started
from nnn_cli.data.sinks import BiasFileSink, RunFolderSink, is_run_target
from nnn_cli.errors import ParameterError
from nnn_cli.scale.engines import check_reachable, make_scheduler
from nnn_cli.scale.grid import bias_plan
from nnn_cli.scale.pipeline import BiasParams, index_plan, index_spec, run_bias
from nnn_cli.scale.scheduler import EngineOptions

NoteFn = Callable[[str], None]


@dataclass
class BiasOutcome:
    """What a bias computation produced, whatever ran it."""

    bias: np.ndarray | None  # (N,) when the driver holds it (a bias file); None for a run folder
    seconds: float
    details: dict = field(default_factory=dict)  # plan, index, per-task figures (JSON-ready)


def blocked(engine: EngineOptions, output: str | None) -> bool:
    """True when the run goes through the blocked pipeline (a run folder, a scheduler other than this
    process's in-memory engine, or a plan asked for explicitly)."""
    return (
        engine.engine != "local"
        or (output is not None and is_run_target(output))
        or engine.resume
        or engine.block_rows is not None
        or engine.partition_rows is not None
    )


def bias_sink(output: str, inputs: list, engine: EngineOptions, ids: np.ndarray | None = None) -> Any:
    """The sink for ``-o``: a run folder or a bias file; checked (writes nothing) by the pipeline."""
    if is_run_target(output):
        return RunFolderSink(str(output), dict(engine.storage_options))
    return BiasFileSink(str(output), inputs, ids)


def check_bias_options(engine: EngineOptions, output: str | None, index: Any, memory_budget: int | None) -> None:
    """Refuse option combinations the chosen way of running cannot honour (before anything is opened)."""
    check_reachable(engine)
    if not blocked(engine, output):
        return
    if index.save_index is not None or index.load_index is not None or memory_budget is not None:
        raise ParameterError(
            "a blocked run (--engine ray, a run folder, --resume or --block-rows) builds its index once and "
            "keeps it in the run folder, and its blocks bound memory: drop --load-index, --save-index and "
            "--memory-budget"
        )


def compute_bias(
    gallery: Any,
    reference: Any,
    params: BiasParams,
    sink: Any,
    engine: EngineOptions,
    index: Any,
    *,
    memory_budget: int | None = None,
    device: str = "cpu",
    threads: int = 0,
    provenance: Callable[[], dict] | None = None,
    datasets: Callable[[], dict] | None = None,
    progress: ProgressFn | None = None,
    note: NoteFn = lambda line: None,
) -> BiasOutcome:
    """Compute the bias of every gallery row into ``sink``; ``provenance()`` (attributes) and ``datasets()``
    (extra arrays: the reference's leak sketch) are written with an HDF5 bias file (a run folder and a .npy
    record neither, so neither is computed for them)."""
    if isinstance(sink, BiasFileSink) and sink.records_extra:  # a .npy keeps neither: none is computed
        sink.provenance, sink.datasets = provenance, datasets
    t0 = time.perf_counter()
    if getattr(gallery, "sequential", False):  # read once, in order (a store's cursor): streamed to the sink
        details = _sequential_bias(gallery, reference, params, sink, engine, index, memory_budget, progress)
    elif blocked(engine, sink.target if sink.remote_writes else None):  # a sink written whole needs no run folder
        details = _blocked_bias(gallery, reference, params, sink, engine, index, threads, progress, note)
    else:
        details = _whole_bias(gallery, reference, params, sink, index, memory_budget, device, progress, note)
    bias = None if sink.remote_writes else sink.bias  # gathered on the driver (a bias file, a store)
    return BiasOutcome(bias, time.perf_counter() - t0, details)


def _blocked_bias(gallery, reference, params, sink, engine, index, threads, progress, note) -> dict:
    opts = {key: getattr(index, key) for key in ("index", "nlist", "nprobe", "ef_search", "recall")}
    spec = index_spec(opts, gallery, reference, params.k)
    if spec is None:
        plan = bias_plan(gallery.n, reference.n, engine.block_rows, engine.partition_rows)
    else:
        plan = index_plan(gallery.n, reference.n, engine.block_rows, spec.choice.kind)
    scheduler = make_scheduler(engine.engine, threads=threads, **engine.scheduler_kwargs())
    stats = run_bias(
        gallery,
        reference,
        params,
        plan,
        scheduler,
        sink,
        resume=engine.resume,
        gpus=bool(engine.gpus_per_task),
        index=spec,
        progress=progress,
    )
    if stats.index:
        rec = stats.index
        note(
            f"index: {rec.get('index_description')}; {rec.get('index_reason')}; built once in "
            f"{rec.get('index_driver_seconds', 0):.1f}s, {rec.get('index_bytes', 0) / 1e6:.1f} MB shipped to tasks"
        )
    return {"engine": scheduler.name, **stats.as_dict()}


def _sequential_bias(gallery, reference, params, sink, engine, index, memory_budget, progress) -> dict:
    """A gallery read once in order, ``round_up(gallery.block_rows, QUERY_TILE)`` rows at a time (a store's
    cursor, which reads ``block_rows`` per fetch): each block's exact top-k against the reference (held in
    memory) goes to the sink with its rows as it comes, so memory is bounded by a block; the sink commits
    once at the end, or aborts on any failure.  The GEMM tiles are the in-memory path's (bit-identical)."""
    from nnn_cli.core.nnn import bias_from_topk, check_k
    from nnn_cli.core.topk import QUERY_TILE, RunningTopScores
    from nnn_cli.scale.grid import round_up

    if engine.engine != "local" or not index.exact_flat or memory_budget is not None:
        raise ParameterError(
            f"{gallery.name}: a store is read once, in order, by this process, exactly: drop --engine, --index, "
            "--load-index, --save-index and --memory-budget"
        )
    rows = round_up(max(1, int(gallery.block_rows)), QUERY_TILE)
    k = check_k(params.k, reference.n)
    r = reference.read(params.metric)
    blocks = 0
    try:
        for b, (start, g) in enumerate(gallery.iter_blocks(params.metric, rows)):
            running = RunningTopScores(g, k)
            running.add(r, last=True)
            topk = running.result()
            arrays = {"bias": bias_from_topk(topk, params.alpha, k), "rows": g}
            sink.put_block(b, (start, start + len(g)), {**arrays, **({"topk": topk} if params.save_topk else {})})
            blocks += 1
            if progress:
                progress(start + len(g), gallery.n)
        sink.commit({})
    except BaseException:
        sink.abort()
        raise
    return {"engine": "local", "plan": {"mode": "sequential", "block_rows": rows, "blocks": blocks}}


def _whole_bias(gallery, reference, params, sink, index, memory_budget, device, progress, note) -> dict:
    """This process's in-memory engine (exact, streamed, indexed or CUDA), one block through the sink."""
    from nnn_cli.scale.plan import plan_bias, run_bias_plan

    plan = plan_bias(
        gallery,
        reference,
        params.k,
        index.index,
        index.nlist,
        index.nprobe,
        index.ef_search,
        index.recall,
        memory_budget,
        device,
        index.load_index,
        index.save_index,
        params.save_topk,
    )
    for line in plan.notes:
        note(line)
    if plan.mode != "exact" or index.index != "flat":
        note(plan.describe())
    with contextlib.ExitStack() as stack:
        if plan.room_beside and getattr(sink, "datasets", None) is not None:
            # The extra datasets (the reference's leak sketch) are computed beside the exact bias, from their
            # own reads, filling the moments its tiles leave a core idle (reads, hashing, merges).  BLAS is limited to one thread
            # by THIS thread for the whole step: OpenBLAS ignores a limit set from another thread once it
            # has run, and both the tiles and the sketch must run single-threaded GEMMs.
            stack.enter_context(single_threaded_blas())
            sink.datasets = started(sink.datasets)
            stack.push(_wait_on_failure(sink.datasets))
        b, topk, info = run_bias_plan(plan, gallery, reference, params.alpha, params.k, params.metric, progress)
        sink.allocate(gallery.n, topk.shape[1] if topk is not None else None)
        sink.put_block(0, (0, gallery.n), {"bias": b, **({"topk": topk} if topk is not None else {})})
        details = {"engine": "local", **plan.attrs(), **info}
        sink.attrs.update({key: v for key, v in details.items() if not isinstance(v, dict)})
        sink.commit({})
    if "index_sample_recall" in info:
        note(
            f"index top-{params.k} recall on {info['index_sample_rows']} sampled gallery rows: "
            f"{info['index_sample_recall']:.3f}"
        )
    if "index_warning" in info:
        note(f"warning: {info['index_warning']}")
    return details


def _wait_on_failure(result: Callable[[], Any]) -> Callable[..., bool]:
    """An exit callback: when the step fails with an error, wait for the work ``result`` belongs to (its own
    outcome ignored) so that it has left the BLAS limit before this thread lifts it; on a signal
    (KeyboardInterrupt, SystemExit) the process is leaving: no wait."""

    def on_exit(kind, value, tb) -> bool:
        if kind is not None and issubclass(kind, Exception):
            try:
                result()
            except BaseException:  # noqa: BLE001  the step's own error is the one to report
                pass
        return False

    return on_exit


def grow_bias(
    target: str,
    gallery: str,
    other: str | None,
    operation: str,
    output: str | None,
    engine: EngineOptions,
    threads: int = 0,
    *,
    alpha: float | None = None,
    k: int | None = None,
    metric: str = "cosine",
    wait: float = 10.0,
    progress: ProgressFn | None = None,
) -> dict:
    """``--append-to TARGET`` (``gallery`` = the new items, ``other`` = the reference) or ``--update TARGET``
    (``gallery`` = the gallery, ``other`` = the new queries): a run folder grows by blocks through the
    pipeline, an HDF5 bias file in memory; both exact, both under the target's lock, both refusing rows
    already added."""
    t0 = time.perf_counter()
    if is_run_target(target):
        out = _grow_run(target, gallery, other, operation, output, engine, threads, alpha, k, metric, wait, progress)
    else:
        if engine.engine != "local":
            raise ParameterError(f"{target}: an HDF5 bias file is grown in this process: drop --engine {engine.engine}")
        out = _grow_file(target, gallery, other, operation, output, alpha, k, metric, wait, progress)
    return {**out, "seconds": time.perf_counter() - t0}


def _grow_run(target, gallery, other, operation, output, engine, threads, alpha, k, metric, wait, progress) -> dict:
    from functools import partial

    from nnn_cli.data.inputs import open_embeddings
    from nnn_cli.scale.pipeline import run_add_reference, run_append

    if output is not None and str(output).rstrip("/") != str(target).rstrip("/"):
        raise ParameterError(f"{target}: a run folder is grown in place: drop -o")
    so = dict(engine.storage_options)
    sink = RunFolderSink(str(target), so)
    scheduler = make_scheduler(engine.engine, threads=threads, **engine.scheduler_kwargs())
    opener = partial(_open, storage_options=so)
    kw = {"alpha": alpha, "k": k, "metric": metric, "gpus": bool(engine.gpus_per_task), "progress": progress}
    with sink.lock(wait):
        first = open_embeddings(
            gallery, "new gallery items" if operation == "append" else "gallery", storage_options=so
        )
        second = open_embeddings(
            other, "reference" if operation == "append" else "new reference queries", storage_options=so
        )
        if operation == "append":
            out = run_append(first, second, opener, sink, scheduler, **kw)
        else:
            out = run_add_reference(first, opener, second, sink, scheduler, **kw)
    if "n_reference" not in out:
        out["n_reference"] = sum(int(p["rows"]) for p in sink.manifest["inputs"]["reference"]["parts"])
    return {**out, "output": str(target), "engine": scheduler.name}


def _open(path: str, label: str, storage_options: dict) -> Any:
    from nnn_cli.data.inputs import open_embeddings

    return open_embeddings(path, label, storage_options=storage_options)


def _grow_file(target, gallery, other, operation, output, alpha, k, metric, wait, progress) -> dict:
    from nnn_cli.data.biasfile import carried_sketch, locked_bias_update, write_bias
    from nnn_cli.data.inputs import open_embeddings
    from nnn_cli.data.outputs import check_output_path
    from nnn_cli.scale.incremental import add_reference, append_items

    output = output or target
    check_output_path(output, [gallery, other], (".h5", ".hdf5"), "an updated bias file (HDF5)")
    new_src = open_embeddings(
        gallery if operation == "append" else other,
        "new gallery items" if operation == "append" else "new reference queries",
    )
    other_src = open_embeddings(
        other if operation == "append" else gallery, "reference" if operation == "append" else "gallery"
    )
    with locked_bias_update(target, output, wait) as stored:
        if operation == "append":
            b, topk, ids, attrs = append_items(stored, new_src, other_src, metric, alpha, k, progress=progress)
        else:
            b, topk, ids, attrs = add_reference(stored, other_src, new_src, metric, alpha, k, progress=progress)
        sketch = carried_sketch(target, operation == "append", new_src if operation != "append" else None, attrs)
        write_bias(output, b, attrs, ids=ids, extra={**({"topk": topk} if topk is not None else {}), **sketch})
    return {
        "output": str(output), "n_added": new_src.n, "n_gallery": int(attrs.get("n_gallery", len(b))),
        "n_reference": int(attrs.get("n_reference", 0)), "alpha": stored.alpha, "k": stored.k,
        "metric": stored.metric, "engine": "local",
    }  # fmt: skip


def check_search_options(engine: EngineOptions, index: Any) -> None:
    """A blocked search (``--engine ray``) is exact and not resumable; its cluster answers."""
    if engine.resume:
        raise ParameterError("search does not resume (it writes one results file): drop --resume")
    if blocked(engine, None) and not index.exact_flat:
        raise ParameterError(f"--engine {engine.engine} searches exactly: drop --index, --load-index and --save-index")
    check_reachable(engine)


def search_topk(
    queries: Any,
    gallery: Any,
    bias: np.ndarray | None,
    top_k: int,
    metric: str,
    engine: EngineOptions,
    index: Any,
    *,
    overfetch: int | None = None,
    device: str = "cpu",
    threads: int = 0,
    progress: ProgressFn | None = None,
    note: NoteFn = lambda line: None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(scores, indices, info) of the debiased top-``top_k``: blocked on a scheduler, or the in-memory plan."""
    if blocked(engine, None):
        from nnn_cli.scale.pipeline import run_search, search_plan

        plan = search_plan(queries.n, gallery.n, engine.block_rows, engine.partition_rows)
        scheduler = make_scheduler(engine.engine, threads=threads, **engine.scheduler_kwargs())
        gpus = bool(engine.gpus_per_task)
        scores, idx = run_search(queries, gallery, bias, top_k, metric, plan, scheduler, gpus=gpus, progress=progress)
        return scores, idx, {"index": "flat", "engine": scheduler.name, "plan": plan.as_dict()}
    return _whole_search(queries, gallery, bias, top_k, metric, index, overfetch, device, progress, note)


def _whole_search(queries, gallery, bias, top_k, metric, index, overfetch, device, progress, note) -> tuple:
    from nnn_cli.scale.plan import plan_search, run_search_plan

    splan = plan_search(
        queries.n, gallery.n, gallery.dim, top_k, index.index, index.nlist, index.nprobe, index.ef_search,
        index.recall, overfetch, device, index.load_index, index.save_index,
    )  # fmt: skip
    for line in splan.notes:
        note(line)
    if splan.indexed:
        note(splan.describe())
    q, g = queries.read(metric), gallery.read(metric)
    scores, idx, info = run_search_plan(splan, q, g, bias, top_k, gallery.fingerprint(), metric, progress=progress)
    if "index_sample_recall" in info:
        note(
            f"index top-{idx.shape[1]} recall (debiased, vs exact) on {info['index_sample_rows']} "
            f"sampled queries: {info['index_sample_recall']:.3f}"
        )
    if "index_warning" in info:
        note(f"warning: {info['index_warning']}")
    return scores, idx, {**{key: v for key, v in info.items() if key != "index_tuned"}, "engine": "local"}


__all__ = [
    "BiasOutcome",
    "bias_sink",
    "blocked",
    "check_bias_options",
    "check_search_options",
    "compute_bias",
    "grow_bias",
    "search_topk",
]
