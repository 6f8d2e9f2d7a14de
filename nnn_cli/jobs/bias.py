"""`nnn bias`: each gallery item's bias, alpha x mean of its k highest reference-query scores.

Three use cases, one entry point :func:`bias`: a fresh bias file (exact, streamed
or through an index), ``append_to`` (new gallery items) and ``update`` with
``reference_add`` (new reference queries); the last two are exact and cost
only the new rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from nnn_cli.core.nnn import check_k
from nnn_cli.data.biasfile import locked_bias_update, write_bias
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.locks import DEFAULT_WAIT
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.provenance import base_attrs, bias_provenance
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import (
    EngineOptions,
    IndexOptions,
    JobResult,
    NoteFn,
    Notes,
    PathLike,
    ProgressFn,
    note_backend_mismatch,
    open_source,
    resolve_params,
    setup_threads,
)
from nnn_cli.scale.budget import parse_memory_budget
from nnn_cli.scale.incremental import add_reference, append_items
from nnn_cli.scale.plan import plan_bias, run_bias_plan

BIAS_SUFFIXES = (".h5", ".hdf5", ".npy")


def bias(
    gallery: PathLike,
    reference: Optional[PathLike] = None,
    output: Optional[PathLike] = None,
    *,
    alpha: Optional[float] = None,
    k: Optional[int] = None,
    params: Optional[PathLike] = None,
    metric: str = "cosine",
    threads: int = 0,
    store_topk: bool = True,
    append_to: Optional[PathLike] = None,
    update: Optional[PathLike] = None,
    reference_add: Optional[PathLike] = None,
    index: IndexOptions | None = None,
    memory_budget: str | int | None = None,
    device: str = "cpu",
    wait: float = DEFAULT_WAIT,
    gallery_ids: Optional[PathLike] = None,
    ids_column: Optional[str] = None,
    engine: EngineOptions | None = None,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """Compute and write a bias file with full provenance; returns its summary.

    ``gallery`` etc. are paths (``FILE.h5:DATASET``, ``.npy``, shard folders, ``-``).
    Raises :class:`~nnn_cli.errors.NNNError` subclasses on bad input, before any heavy work.
    """
    index = index or IndexOptions()
    engine = (engine or EngineOptions()).check()
    notes = Notes(on_note)
    if engine.engine == "ray":
        if index.save_index is not None or index.load_index is not None or memory_budget or gallery_ids is not None:
            raise ParameterError(
                "--engine ray builds its index on the driver and keeps it in the output folder "
                "(index.faiss), blocks bound memory: drop --load-index, --save-index, "
                "--memory-budget and --gallery-ids"
            )
        if append_to is not None or update is not None or reference_add is not None:
            if index.index != "flat":
                raise ParameterError("--append-to/--update compute exactly: drop --index")
            return _incremental(
                gallery,
                reference,
                output,
                alpha,
                k,
                params,
                metric,
                0,
                append_to,
                update,
                reference_add,
                wait,
                progress,
                notes,
                engine,
            )
        return _bias_ray(
            gallery, reference, output, alpha, k, params, metric, store_topk, engine, progress, notes, index
        )
    if append_to is not None or update is not None or reference_add is not None:
        if not index.exact_flat or memory_budget:
            raise ParameterError(
                "--append-to/--update compute exactly, in memory: drop --index, --load-index, "
                "--save-index and --memory-budget"
            )
        return _incremental(
            gallery,
            reference,
            output,
            alpha,
            k,
            params,
            metric,
            threads,
            append_to,
            update,
            reference_add,
            wait,
            progress,
            notes,
        )
    if reference is None or output is None:
        raise ParameterError("give --reference R and -o BIAS.h5 (or --append-to / --update an existing bias file)")
    check_output_path(output, [gallery, reference], BIAS_SUFFIXES, "bias output")
    if index.save_index is not None:
        check_output_path(index.save_index, [gallery, reference, output], None, "--save-index")
    budget = parse_memory_budget(memory_budget)
    alpha, k = resolve_params(alpha, k, params)
    g_src = open_source(gallery, "gallery", notes, gallery_ids, ids_column)
    r_src = open_source(reference, "reference", notes, None, ids_column)
    check_same_dim(g_src, r_src)
    note_backend_mismatch(notes, g_src, r_src)
    check_k(k, r_src.n)
    setup_threads(threads)  # before planning: the block plan gives each worker thread its own tile
    plan = plan_bias(
        g_src,
        r_src,
        k,
        index.index,
        index.nlist,
        index.nprobe,
        index.ef_search,
        index.recall,
        budget,
        device,
        index.load_index,
        index.save_index,
        store_topk,
    )
    for note in plan.notes:
        notes(note)
    if plan.mode != "exact" or index.index != "flat":
        notes(plan.describe())

    t0 = time.perf_counter()
    b, topk, run_info = run_bias_plan(plan, g_src, r_src, alpha, k, metric, progress)
    elapsed = time.perf_counter() - t0
    attrs = base_attrs("bias", alpha=alpha, k=k, metric=metric, seconds=round(elapsed, 3))
    attrs.update(bias_provenance(g_src, r_src))
    attrs.update(plan.attrs())
    attrs.update({key: value for key, value in run_info.items() if not isinstance(value, dict)})
    write_bias(output, b, attrs, ids=g_src.ids(), extra={"topk": topk} if topk is not None else None)
    if "index_sample_recall" in run_info:
        notes(
            f"index top-{k} recall on {run_info['index_sample_rows']} sampled gallery rows: "
            f"{run_info['index_sample_recall']:.3f}"
        )
    if "index_warning" in run_info:
        notes(f"warning: {run_info['index_warning']}")
    summary = {
        "output": str(output),
        "n_gallery": g_src.n,
        "n_reference": r_src.n,
        "dim": g_src.dim,
        "alpha": alpha,
        "k": k,
        "metric": metric,
        "seconds": round(elapsed, 3),
        "bias_mean": float(b.mean()),
        "bias_min": float(b.min()),
        "bias_max": float(b.max()),
        **plan.attrs(),
        **run_info,
    }
    summary["message"] = (
        f"wrote {output}: {g_src.n} biases (alpha={alpha}, k={k}, metric={metric}, "
        f"{r_src.n} reference queries) in {elapsed:.2f}s; mean {b.mean():.4f}, "
        f"range [{b.min():.4f}, {b.max():.4f}]"
    )
    return JobResult(summary, Path(output), notes.lines)


def _incremental(
    gallery,
    reference,
    output,
    alpha,
    k,
    params,
    metric,
    threads,
    append_to,
    update,
    reference_add,
    wait,
    progress,
    notes: Notes,
    engine: EngineOptions | None = None,
) -> JobResult:
    """``--append-to`` / ``--update --reference-add``: validate, then read, merge exactly and write under an
    exclusive lock on the file (a second writer waits up to ``wait`` s, then exits 2 naming the holder).
    With ``--engine ray`` the target is a run folder/URL of `nnn bias --engine ray` (see :func:`_incremental_ray`)."""
    if params is not None:
        alpha, k = resolve_params(alpha, k, params)
    if (append_to is None) == (update is None):
        raise ParameterError(
            "give either --append-to BIAS.h5 (new gallery items) or --update BIAS.h5 "
            "--reference-add NEW (new reference queries), not both"
        )
    if append_to is not None:
        if reference is None or reference_add is not None:
            raise ParameterError("--append-to needs --reference R (the file's reference) and no --reference-add")
        target = append_to
    else:
        if reference_add is None or reference is not None:
            raise ParameterError("--update needs --reference-add NEW_QUERIES (and no --reference)")
        target = update
    if engine is not None and engine.engine == "ray":
        return _incremental_ray(
            gallery,
            reference,
            output,
            alpha,
            k,
            metric,
            append_to,
            update,
            reference_add,
            target,
            wait,
            progress,
            notes,
            engine,
        )
    target = Path(target)
    output = output or target
    check_output_path(output, [gallery, reference, reference_add], (".h5", ".hdf5"), "an updated bias file (HDF5)")
    setup_threads(threads)
    new_label = "new gallery items" if append_to is not None else "new reference queries"
    new_src = open_embeddings(gallery if append_to is not None else reference_add, new_label)
    other_src = (
        open_embeddings(reference, "reference") if append_to is not None else open_embeddings(gallery, "gallery")
    )
    t0 = time.perf_counter()
    with locked_bias_update(target, output, wait) as stored:
        if append_to is not None:
            b, topk, ids, attrs = append_items(stored, new_src, other_src, metric, alpha, k, progress=progress)
            what = f"appended {new_src.n} items"
        else:
            b, topk, ids, attrs = add_reference(stored, other_src, new_src, metric, alpha, k, progress=progress)
            what = f"added {new_src.n} reference queries"
        write_bias(output, b, attrs, ids=ids, extra={"topk": topk} if topk is not None else None)
    elapsed = time.perf_counter() - t0
    summary = {
        "output": str(output),
        "operation": "append" if append_to is not None else "reference-add",
        "n_added": new_src.n,
        "n_gallery": int(attrs.get("n_gallery", len(b))),
        "n_reference": int(attrs.get("n_reference", 0)),
        "alpha": stored.alpha,
        "k": stored.k,
        "metric": stored.metric,
        "seconds": round(elapsed, 3),
    }
    summary["message"] = (
        f"wrote {output}: {what}; {len(b)} biases against {summary['n_reference']} reference queries in {elapsed:.2f}s"
    )
    return JobResult(summary, Path(output), notes.lines)


def _incremental_ray(
    gallery,
    reference,
    output,
    alpha,
    k,
    metric,
    append_to,
    update,
    reference_add,
    target,
    wait,
    progress,
    notes: Notes,
    engine: EngineOptions,
) -> JobResult:
    """``--append-to RUN`` / ``--update RUN --reference-add NEW`` on a run folder/URL of ``--engine ray``:
    new blocks (append) or every block's stored top-k merged with the new queries (update), exact; the
    manifest is rewritten once at the end (the commit), under the folder's lock when it is local."""
    if output is not None and str(output).rstrip("/") != str(target).rstrip("/"):
        raise ParameterError("with --engine ray, --append-to/--update change the run folder in place: drop -o")
    if engine.resume or engine.block_rows is not None or engine.partition_rows is not None:
        raise ParameterError(
            "--append-to/--update keep the run's plan: drop --resume, --block-rows and --partition-rows"
        )
    try:
        from nnn_cli.scale.ray import ray_add_reference, ray_append
    except ImportError as exc:  # pragma: no cover - the optional extra
        from nnn_cli.errors import DependencyError

        raise DependencyError(f"--engine ray needs the ray extra: pip install 'nnn-cli[ray]' ({exc})") from None
    kw = {**engine.ray_kwargs(), "alpha": alpha, "k": k, "metric": metric, "wait": wait, "progress": progress}
    if append_to is not None:
        summary = ray_append(gallery, reference, str(target), **kw)
        what = f"appended {summary['n_added']} items as {summary['blocks_added']} new blocks"
    else:
        summary = ray_add_reference(gallery, reference_add, str(target), **kw)
        what = f"added {summary['n_added']} reference queries to {summary['blocks_rewritten']} blocks"
    summary["message"] = (
        f"updated {target}: {what} (alpha={summary['alpha']}, k={summary['k']}, "
        f"metric={summary['metric']}) with --engine ray in {summary['seconds']['total']:.1f}s"
    )
    return JobResult(summary, None, notes.lines)


def _bias_ray(
    gallery,
    reference,
    output,
    alpha,
    k,
    params,
    metric,
    store_topk,
    engine: EngineOptions,
    progress,
    notes: Notes,
    index: IndexOptions | None = None,
) -> JobResult:
    """``--engine ray``: the exact bias as Ray tasks, written block by block into the folder/URL ``output``
    (``manifest.json`` + ``blocks/``), resumable; byte-identical to ``--engine local`` on one machine."""
    if reference is None or output is None:
        raise ParameterError("give --reference R and -o OUT_FOLDER (a folder or URL for the manifest and blocks)")
    if str(output).lower().endswith((".h5", ".hdf5", ".npy", ".npz", ".json")):
        raise ParameterError(
            f"{output}: with --engine ray the output is a folder or URL (manifest.json + blocks/), not a file name"
        )
    alpha, k = resolve_params(alpha, k, params)
    try:
        from nnn_cli.scale.ray import ray_bias
    except ImportError as exc:  # pragma: no cover - the optional extra
        from nnn_cli.errors import DependencyError

        raise DependencyError(f"--engine ray needs the ray extra: pip install 'nnn-cli[ray]' ({exc})") from None
    index_opts = None
    if index is not None and index.index != "flat":
        index_opts = {
            "index": index.index,
            "nlist": index.nlist,
            "nprobe": index.nprobe,
            "ef_search": index.ef_search,
            "recall": index.recall,
        }
    summary = ray_bias(
        gallery,
        reference,
        alpha,
        k,
        metric,
        str(output),
        resume=engine.resume,
        save_topk=store_topk,
        progress=progress,
        index=index_opts,
        **engine.ray_kwargs(),
    )
    if summary.get("index"):
        rec = summary["index"]
        notes(
            f"index: {rec.get('index_description')}; {rec.get('index_reason')}; built once on the driver in "
            f"{rec.get('index_driver_seconds', 0):.1f}s, {rec.get('index_bytes', 0) / 1e6:.1f} MB shipped to tasks"
        )
        if "index_sample_recall" in rec:
            notes(
                f"index top-{k} recall on {rec['index_sample_rows']} sampled gallery rows: "
                f"{rec['index_sample_recall']:.3f}"
            )
        if "index_warning" in rec:
            notes(f"warning: {rec['index_warning']}")
    done = summary.get("blocks_computed", 0)
    skipped = summary.get("blocks_skipped", 0)
    secs = summary.get("seconds", {}).get("total", 0.0) if isinstance(summary.get("seconds"), dict) else 0.0
    summary["message"] = (
        f"wrote {output}: {summary.get('blocks', done + skipped)} blocks ({done} computed, "
        f"{skipped} resumed) of biases (alpha={alpha}, k={k}, metric={metric}) with --engine ray "
        f"in {secs:.1f}s"
    )
    return JobResult(summary, None, notes.lines)
