"""`nnn bias --engine ray`: the exact (or indexed) bias as Ray tasks, written block by block with a manifest."""

from __future__ import annotations

import time

import numpy as np

from nnn_cli.core.nnn import check_alpha, check_k
from nnn_cli.core.topk import DATABASE_TILE, QUERY_TILE, ProgressFn
from nnn_cli.data import objstore
from nnn_cli.data.manifest import FORMAT, MANIFEST
from nnn_cli.data.sources import check_metric
from nnn_cli.errors import MismatchError, ParameterError
from nnn_cli.scale.ray.cluster import DEFAULT_IO_TIMEOUT
from nnn_cli.scale.ray.session import (
    _comparable,
    _input_record,
    _round_up,
    _run_windowed,
    make_plan,
    open_input,
    ray_session,
    task_options,
)
from nnn_cli.scale.ray.tasks import index_bias_task, merge_bias_task, partial_topk_task

DEFAULT_BLOCK_ROWS = 64 * QUERY_TILE  # 65,536 gallery rows per task
DEFAULT_PARTITION_ROWS = 128 * DATABASE_TILE  # 1,048,576 reference rows per task
STREAM_ROWS = 8 * DATABASE_TILE  # reference rows fetched per ranged read inside a task


def _index_choice(index: dict | None, gallery, reference, k: int):
    """(options recorded in the manifest, IndexChoice) for ``index``; (None, None) for the exact path."""
    if not index or (index.get("index") or "flat") == "flat":
        return None, None
    from nnn_cli.scale.index.choose import choose_index

    opts = {key: index.get(key) for key in ("index", "nlist", "nprobe", "ef_search", "recall")}
    choice = choose_index(
        opts["index"],
        gallery.n,
        reference.n,
        reference.dim,
        k,
        opts["nlist"],
        opts["nprobe"],
        opts["ef_search"],
        opts["recall"],
    )
    if choice.exact:  # auto chose the exact path: recorded as asked, run exactly
        return opts, None
    if choice.kind == "factory":
        from nnn_cli.scale.index.build import new_index
        from nnn_cli.scale.index.steps import stores_exact_vectors

        if not stores_exact_vectors(new_index(choice, reference.dim)):
            raise ParameterError(
                f"--index {choice.factory!r} stores quantized codes, which need the float32 "
                "reference in every task to re-score: use it with --engine local, or an index "
                "storing float32 vectors (ivf, hnsw, IVFn,Flat, HNSWm) with --engine ray"
            )
    return opts, choice


def _driver_index(
    gallery, reference, k: int, metric: str, choice, output_url: str, so: dict, resumed: dict | None
) -> tuple[np.ndarray, dict]:
    """(serialized index as uint8, its manifest record): built once here (the local builder, depth set or
    tuned on a gallery sample as locally) and saved as ``OUT/index.faiss``; a resumed run reloads that file,
    so every block of one run goes through the same index."""
    import hashlib

    from nnn_cli.scale.device import faiss_module
    from nnn_cli.scale.index.steps import prepare_reference_index

    index_url = objstore.join(output_url, "index.faiss")
    if resumed and objstore.exists(index_url, so):
        blob = np.frombuffer(objstore.read_bytes(index_url, so), dtype=np.uint8)
        if hashlib.blake2b(blob.tobytes(), digest_size=16).hexdigest() != resumed.get("index_sha"):
            raise MismatchError(
                f"{index_url}: not the index this run was started with (hash differs); start a new output folder"
            )
        return blob, resumed
    t0 = time.time()
    index, _, info = prepare_reference_index(gallery, reference, k, metric, choice)
    blob = faiss_module().serialize_index(index)
    objstore.write_bytes(index_url, blob.tobytes(), so)
    record = {
        **choice.to_dict(),
        **info,
        "index_file": "index.faiss",
        "index_bytes": int(blob.nbytes),
        "index_sha": hashlib.blake2b(blob.tobytes(), digest_size=16).hexdigest(),
        "index_driver_seconds": round(time.time() - t0, 3),
    }
    return blob, record


# ---------------------------------------------------------------------------
# Bias
# ---------------------------------------------------------------------------
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
    block_rows: int = DEFAULT_BLOCK_ROWS,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
    max_retries: int = 3,
    progress: ProgressFn | None = None,
    storage_options: dict | None = None,
    save_topk: bool = True,
    max_blocks_in_flight: int | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
    io_timeout: float = DEFAULT_IO_TIMEOUT,
    index: dict | None = None,
    _task_delay: float = 0.0,
) -> dict:
    """NNN bias of every gallery row, as Ray tasks; writes ``output_url`` (a folder: manifest + blocks).

    Exact by default.  ``index={"index": "ivf"|"hnsw"|"auto"|FACTORY, "nlist", "nprobe", "ef_search",
    "recall"}`` builds one index over the reference on the driver (the local builder, depth set or
    tuned as locally), stores it as ``OUT/index.faiss``, ships it to the tasks once through the object
    store, and runs one task per gallery block through it (IVF-Flat probed list-major, as locally).

    Returns a summary (plan, blocks computed / skipped, per-stage seconds, per-task figures).
    ``resume=True`` keeps the blocks the manifest lists as done (after checking that inputs, parameters
    and plan match) and computes the rest; without it an existing manifest is an error.
    """
    t_start = time.time()
    check_metric(metric)
    alpha = check_alpha(alpha)
    so = dict(storage_options or {})
    gallery = open_input(gallery_url, so, "gallery")
    reference = open_input(reference_url, so, "reference")
    if gallery.dim != reference.dim:
        raise MismatchError(f"dimension mismatch: gallery d={gallery.dim}, reference d={reference.dim}")
    k = check_k(k, reference.n)
    index_opts, choice = _index_choice(index, gallery, reference, k)
    if choice is None:
        plan = make_plan(
            gallery.n,
            reference.n,
            min(block_rows, _round_up(gallery.n, QUERY_TILE)),
            min(partition_rows, _round_up(reference.n, DATABASE_TILE)),
        )
    else:  # one task per gallery block (the whole reference is in the index), blocks on list-major's row grid
        from nnn_cli.scale.index.listscan import LIST_ROW_BLOCK

        plan = make_plan(
            gallery.n,
            reference.n,
            min(block_rows, _round_up(gallery.n, LIST_ROW_BLOCK)),
            _round_up(reference.n, DATABASE_TILE),
            block_multiple=LIST_ROW_BLOCK,
        )
    params = {"alpha": alpha, "k": k, "metric": metric, "save_topk": bool(save_topk)}
    if index_opts is not None:
        params["index"] = index_opts  # the options asked for: --resume refuses other ones
    manifest = {
        "format": FORMAT,
        "kind": "bias",
        "inputs": {"gallery": _input_record(gallery), "reference": _input_record(reference)},
        "params": params,
        "plan": plan.as_dict(),
        "blocks_done": {},
    }
    manifest_url = objstore.join(output_url, MANIFEST)
    old = None
    if objstore.exists(manifest_url, so):
        old = objstore.read_json(manifest_url, so)
        if not resume:
            raise ParameterError(
                f"{output_url}: already holds a manifest; pass --resume to finish it, or choose an empty output folder"
            )
        for key in ("format", "inputs", "params", "plan"):
            if _comparable(old.get(key)) != _comparable(manifest[key]):
                raise MismatchError(
                    f"{output_url}: cannot resume: the manifest's {key} differ from this run's (was {old.get(key)!r})"
                )
        manifest["blocks_done"] = dict(old.get("blocks_done", {}))
    blocks = plan.blocks
    todo = [b for b in range(len(blocks)) if str(b) not in manifest["blocks_done"]]
    skipped = len(blocks) - len(todo)
    blob = None
    if choice is not None and todo:
        blob, manifest["index"] = _driver_index(
            gallery, reference, k, metric, choice, output_url, so, (old or {}).get("index") if resume else None
        )
    elif choice is not None:
        manifest["index"] = (old or {}).get("index")
    manifest["updated"] = time.time()
    objstore.write_json(manifest_url, manifest, so)
    t_planned = time.time()

    records = []
    with ray_session(address, num_cpus, num_gpus, init_kwargs, io_timeout=io_timeout) as ray:
        t_ready = time.time()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        window = max_blocks_in_flight or max(2, 2 * cpus // max(1, len(plan.partitions)) + 1)
        task_opts = task_options(max_retries, gpus_per_task)
        g_ref, r_ref = ray.put(gallery), ray.put(reference)
        if choice is None:
            part_fn = ray.remote(partial_topk_task).options(**task_opts)
            merge_fn = ray.remote(merge_bias_task).options(**task_options(max_retries))

            def submit(b):
                g0, g1 = blocks[b]
                parts = [
                    part_fn.remote(g_ref, g0, g1, r_ref, r0, r1, k, metric, gpus_per_task, _task_delay)
                    for r0, r1 in plan.partitions
                ]
                return merge_fn.remote(b, g0, g1, alpha, k, output_url, so, bool(save_topk), *parts)
        else:
            index_fn = ray.remote(index_bias_task).options(**{**task_opts, "num_gpus": 0})
            blob_ref = ray.put(blob)  # once: every task on a node maps the same object-store copy
            key = manifest["index"]["index_sha"]

            def submit(b):
                g0, g1 = blocks[b]
                return index_fn.remote(
                    key,
                    blob_ref,
                    b,
                    gallery=g_ref,
                    g0=g0,
                    g1=g1,
                    reference=r_ref,
                    k=k,
                    metric=metric,
                    alpha=alpha,
                    output_url=output_url,
                    storage_options=so,
                    save_topk=bool(save_topk),
                    delay=_task_delay,
                )

        def on_done(b, rec):
            records.append(rec)
            manifest["blocks_done"][str(b)] = {
                "rows": rec["rows"],
                "file": f"blocks/bias_{b:06d}.npy",
                "finished": time.time(),
                "task_seconds": round(sum(t["seconds"] for t in rec["tasks"]), 4),
                "devices": sorted({str(t["cuda_visible_devices"]) for t in rec["tasks"]}),
            }
            manifest["updated"] = time.time()
            objstore.write_json(manifest_url, manifest, so)  # commit: this block is done

        _run_windowed(ray, todo, submit, window, on_done, progress, len(blocks), skipped)
    t_end = time.time()
    tasks = [t for r in records for t in r["tasks"]]
    return {
        "output": output_url,
        "plan": plan.as_dict(),
        "blocks": len(blocks),
        "blocks_computed": len(records),
        "blocks_skipped": skipped,
        "tasks_run": len(tasks),
        "seconds": {
            "plan": t_planned - t_start,
            "ray_start": t_ready - t_planned,
            "compute": t_end - t_ready,
            "total": t_end - t_start,
        },
        "task_seconds": [t["seconds"] for t in tasks],
        "task_bytes_read": [t["bytes_read"] for t in tasks],
        "task_flop": [t["flop"] for t in tasks],
        "task_devices": [t["cuda_visible_devices"] for t in tasks],
        "task_windows": [(t["pid"], t["t0"], t["t1"], t["cuda_visible_devices"]) for t in tasks],
        "merge_seconds": [r["merge_seconds"] for r in records],
        **(
            {
                "index": manifest.get("index"),
                "index_rows_recomputed_exactly": sum(r.get("rows_recomputed_exactly", 0) for r in records),
                "index_deserializations": sum(bool(t.get("index_deserialized")) for t in tasks),
            }
            if choice is not None
            else {}
        ),
    }
