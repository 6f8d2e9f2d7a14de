"""``--engine ray``: exact NNN bias and debiased search as Ray core tasks, resumable, on shards behind URLs.

Bias job shape (issue 13)::

    gallery blocks (multiples of 1024 rows)  x  reference partitions (multiples of 8192 rows)
    task(block, partition): hold the gallery block, stream the partition in 8192-row tiles, one
                            single-threaded BLAS GEMM per (1024 x 8192) tile + O(n) partition,
                            return the block's top-k *values* against that partition
    merge(block):           top-k of the partials -> sort descending -> bias_from_topk
                            -> OUT/blocks/bias_BBBBBB.npy (+ topk_BBBBBB.npy), committed whole
    driver:                 OUT/manifest.json (inputs' fingerprints, params, plan, blocks done),
                            rewritten after every finished block

Every score comes from the same GEMM tile shape at the same global tile coordinates as the local
exact path (:class:`nnn_cli.core.topk.RunningTopScores`, 1024 x 8192 tiles), and only values are merged
(the multiset of the k largest values does not depend on the order of merging), so the biases are
byte-identical to :func:`nnn_cli.core.nnn.compute_bias` on the same machine.

Search is the same join turned around: query blocks x gallery partitions, each task returning the
(score, global index) top-k of its query block in its partition with ties to the lower index, merged
per query block by (score descending, index ascending), identical to :class:`nnn_cli.core.topk.GemmIndex`.

With ``address=None`` a private Ray is started for the run on 127.0.0.1 only and stopped after it;
``address="auto"``, ``"HOST:PORT"`` or ``"ray://HEAD:10001"`` joins an existing cluster (KubeRay,
Slurm, ``ray.util.spark``) and leaves it running.  Ray is an optional dependency: ``nnn-cli[ray]``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from nnn_cli.core.nnn import bias_from_topk, check_alpha, check_k
from nnn_cli.core.search import augment_gallery, augment_queries
from nnn_cli.core.topk import (DATABASE_TILE, DEFAULT_QUERY_BLOCK, QUERY_TILE, GemmIndex, ProgressFn,
                               RunningTopScores, merge_top_k, merge_top_scores, search_blocks, sort_descending)
from nnn_cli.data import objstore
from nnn_cli.data.manifest import FORMAT, MANIFEST, is_manifest, read_manifest, read_manifest_bias  # noqa: F401 (re-exported)
from nnn_cli.data.sources import check_metric
from nnn_cli.errors import InputError, MismatchError, ParameterError

DEFAULT_BLOCK_ROWS = 64 * QUERY_TILE          # 65,536 gallery rows per task
DEFAULT_PARTITION_ROWS = 128 * DATABASE_TILE  # 1,048,576 reference rows per task
STREAM_ROWS = 8 * DATABASE_TILE               # reference rows fetched per ranged read inside a task


def _ray():
    try:
        import ray
    except ImportError:
        raise ParameterError("--engine ray needs Ray: pip install 'nnn-cli[ray]'") from None
    return ray


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    n_rows: int          # gallery rows (bias) or query rows (search): the blocked side
    n_stream: int        # reference rows (bias) or gallery rows (search): the partitioned side
    block_rows: int
    partition_rows: int

    @property
    def blocks(self) -> list[tuple[int, int]]:
        return [(s, min(self.n_rows, s + self.block_rows)) for s in range(0, self.n_rows, self.block_rows)]

    @property
    def partitions(self) -> list[tuple[int, int]]:
        return [(s, min(self.n_stream, s + self.partition_rows)) for s in range(0, self.n_stream, self.partition_rows)]

    def as_dict(self) -> dict:
        return {"n_rows": self.n_rows, "n_stream": self.n_stream, "block_rows": self.block_rows,
                "partition_rows": self.partition_rows, "blocks": len(self.blocks),
                "partitions": len(self.partitions), "tasks": len(self.blocks) * len(self.partitions)}


def make_plan(n_rows: int, n_stream: int, block_rows: int, partition_rows: int,
              block_multiple: int = QUERY_TILE, partition_multiple: int = DATABASE_TILE) -> Plan:
    """A plan on the fixed tile grid: block sizes a multiple of ``block_multiple``, partitions of ``partition_multiple``."""
    block_rows, partition_rows = int(block_rows), int(partition_rows)
    if block_rows < 1 or block_rows % block_multiple:
        raise ParameterError(f"block_rows must be a positive multiple of {block_multiple}, got {block_rows}")
    if partition_rows < 1 or partition_rows % partition_multiple:
        raise ParameterError(f"partition_rows must be a positive multiple of {partition_multiple}, got {partition_rows}")
    return Plan(int(n_rows), int(n_stream), block_rows, partition_rows)


# ---------------------------------------------------------------------------
# Ray session: a private local cluster, or a connection to an existing one
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                init_kwargs: dict | None = None):
    """Yield with Ray initialised.  Reuses a connection the caller already holds (and leaves it);
    ``address=None`` starts a private cluster bound to 127.0.0.1 and shuts it down after."""
    if address is None:  # read by Ray at import: keeps a private cluster's addresses on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"configure_logging": False, "log_to_driver": False, **(init_kwargs or {})}
    if address is None:
        kwargs = {"num_cpus": num_cpus or os.cpu_count(), "include_dashboard": False,
                  "_node_ip_address": "127.0.0.1", **({"num_gpus": num_gpus} if num_gpus is not None else {}),
                  **kwargs}
        ray.init(**kwargs)
    else:
        ray.init(address=address, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------
# Tasks (plain functions; wrapped with ray.remote(...) at submission)
# ---------------------------------------------------------------------------
def _task_info(t0: float, nbytes: int) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "t0": t0, "t1": time.time(),
            "seconds": time.time() - t0, "bytes_read": int(nbytes),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _use_cuda(gpus: float) -> bool:
    if not gpus:
        return False
    from nnn_cli.scale.device import torch_cuda

    return torch_cuda()


def partial_topk_task(gallery, g0: int, g1: int, reference, r0: int, r1: int, k: int, metric: str,
                      gpus: float = 0, delay: float = 0.0):
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
            best = merge_top_scores(best, cuda_topk_scores(g, reference.rows(s, min(r1, s + STREAM_ROWS), metric), k), k)
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


def merge_bias_task(block: int, g0: int, g1: int, alpha: float, k: int, output_url: str,
                    storage_options: dict, save_topk: bool, *partials):
    """Merge the partials of one gallery block, write its bias (and top-k) file, return its record."""
    t0 = time.time()
    merged = None
    for values, _ in partials:
        merged = merge_top_scores(merged, values, k)
    topk = sort_descending(merged)
    bias = bias_from_topk(topk, alpha, k)
    objstore.write_npy(objstore.join(output_url, "blocks", f"bias_{block:06d}.npy"), bias, storage_options)
    if save_topk:
        objstore.write_npy(objstore.join(output_url, "blocks", f"topk_{block:06d}.npy"), topk, storage_options)
    tasks = [info for _, info in partials]
    return {"block": block, "rows": [g0, g1], "merge_seconds": time.time() - t0, "tasks": tasks,
            "bias_sum": float(bias.astype(np.float64).sum())}


# ---------------------------------------------------------------------------
# Approximate: one index built on the driver, shipped once through the object store
# ---------------------------------------------------------------------------
_WORKER_INDEX: dict = {}
"""Per worker process: the last index deserialized, by its hash (tasks of one run deserialize once)."""
_DESERIALIZED: list = []
"""Per worker process: the hashes deserialized so far (reported by each task: tests count them)."""


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


def index_bias_task(key: str, blob: np.ndarray, block: int, *, gallery, g0: int, g1: int, reference, k: int,
                    metric: str, alpha: float, output_url: str, storage_options: dict, save_topk: bool,
                    delay: float = 0.0) -> dict:
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
    return {"block": block, "rows": [g0, g1], "merge_seconds": 0.0, "tasks": [info],
            "rows_recomputed_exactly": int(short), "bias_sum": float(bias.astype(np.float64).sum())}


def _index_choice(index: dict | None, gallery, reference, k: int):
    """(options recorded in the manifest, IndexChoice) for ``index``; (None, None) for the exact path."""
    if not index or (index.get("index") or "flat") == "flat":
        return None, None
    from nnn_cli.scale.index.choose import choose_index

    opts = {key: index.get(key) for key in ("index", "nlist", "nprobe", "ef_search", "recall")}
    choice = choose_index(opts["index"], gallery.n, reference.n, reference.dim, k, opts["nlist"], opts["nprobe"],
                          opts["ef_search"], opts["recall"])
    if choice.exact:  # auto chose the exact path: recorded as asked, run exactly
        return opts, None
    if choice.kind == "factory":
        from nnn_cli.scale.index.build import new_index
        from nnn_cli.scale.index.steps import stores_exact_vectors

        if not stores_exact_vectors(new_index(choice, reference.dim)):
            raise ParameterError(f"--index {choice.factory!r} stores quantized codes, which need the float32 "
                                 "reference in every task to re-score: use it with --engine local, or an index "
                                 "storing float32 vectors (ivf, hnsw, IVFn,Flat, HNSWm) with --engine ray")
    return opts, choice


def _driver_index(gallery, reference, k: int, metric: str, choice, output_url: str, so: dict,
                  resumed: dict | None) -> tuple[np.ndarray, dict]:
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
            raise MismatchError(f"{index_url}: not the index this run was started with (hash differs); "
                                "start a new output folder")
        return blob, resumed
    t0 = time.time()
    index, _, info = prepare_reference_index(gallery, reference, k, metric, choice)
    blob = faiss_module().serialize_index(index)
    objstore.write_bytes(index_url, blob.tobytes(), so)
    record = {**choice.to_dict(), **info, "index_file": "index.faiss", "index_bytes": int(blob.nbytes),
              "index_sha": hashlib.blake2b(blob.tobytes(), digest_size=16).hexdigest(),
              "index_driver_seconds": round(time.time() - t0, 3)}
    return blob, record


def partial_search_task(queries, q0: int, q1: int, gallery, r0: int, r1: int, bias, top_k: int,
                        metric: str, n_gallery: int, gpus: float = 0):
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
    merged = None
    for part in parts:
        merged = merge_top_k(merged, part, top_k)
    return merged


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
def open_input(spec, storage_options: dict | None = None, label: str = "embeddings") -> objstore.UrlSource:
    """A URL or plain path of a ``.npy`` shard folder or one ``.npy``, as a picklable ranged-read source."""
    s = str(spec)
    if not objstore.is_url(s) and s.lower().endswith((".h5", ".hdf5", ".he5")) or ".h5:" in s:
        raise InputError(f"{s}: --engine ray reads .npy shard folders or .npy files (HDF5 is not range-readable "
                         "from object stores); convert with `nnn` to a folder of .npy shards")
    return objstore.open_url(s, storage_options, label)


def _input_record(src: objstore.UrlSource) -> dict:
    return {"url": src.url, "shape": list(src.shape), "dtype": np.dtype(src.dtype).str,
            "shards": len(src.infos), "fingerprint": src.cheap_fingerprint()}


# ---------------------------------------------------------------------------
# Bias
# ---------------------------------------------------------------------------
def ray_bias(gallery_url, reference_url, alpha: float, k: int, metric: str, output_url: str, *,
             address: str | None = None, resume: bool = False, gpus_per_task: float = 0,
             block_rows: int = DEFAULT_BLOCK_ROWS, partition_rows: int = DEFAULT_PARTITION_ROWS,
             max_retries: int = 3, progress: ProgressFn | None = None, storage_options: dict | None = None,
             save_topk: bool = True, max_blocks_in_flight: int | None = None, num_cpus: int | None = None,
             num_gpus: int | None = None, init_kwargs: dict | None = None, index: dict | None = None,
             _task_delay: float = 0.0) -> dict:
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
        plan = make_plan(gallery.n, reference.n, min(block_rows, _round_up(gallery.n, QUERY_TILE)),
                         min(partition_rows, _round_up(reference.n, DATABASE_TILE)))
    else:  # one task per gallery block (the whole reference is in the index), blocks on list-major's row grid
        from nnn_cli.scale.index.listscan import LIST_ROW_BLOCK

        plan = make_plan(gallery.n, reference.n, min(block_rows, _round_up(gallery.n, LIST_ROW_BLOCK)),
                         _round_up(reference.n, DATABASE_TILE), block_multiple=LIST_ROW_BLOCK)
    params = {"alpha": alpha, "k": k, "metric": metric, "save_topk": bool(save_topk)}
    if index_opts is not None:
        params["index"] = index_opts  # the options asked for: --resume refuses other ones
    manifest = {"format": FORMAT, "kind": "bias",
                "inputs": {"gallery": _input_record(gallery), "reference": _input_record(reference)},
                "params": params, "plan": plan.as_dict(), "blocks_done": {}}
    manifest_url = objstore.join(output_url, MANIFEST)
    old = None
    if objstore.exists(manifest_url, so):
        old = objstore.read_json(manifest_url, so)
        if not resume:
            raise ParameterError(f"{output_url}: already holds a manifest; pass --resume to finish it, "
                                 "or choose an empty output folder")
        for key in ("format", "inputs", "params", "plan"):
            if _comparable(old.get(key)) != _comparable(manifest[key]):
                raise MismatchError(f"{output_url}: cannot resume: the manifest's {key} differ from this run's "
                                    f"(was {old.get(key)!r})")
        manifest["blocks_done"] = dict(old.get("blocks_done", {}))
    blocks = plan.blocks
    todo = [b for b in range(len(blocks)) if str(b) not in manifest["blocks_done"]]
    skipped = len(blocks) - len(todo)
    blob = None
    if choice is not None and todo:
        blob, manifest["index"] = _driver_index(gallery, reference, k, metric, choice, output_url, so,
                                                (old or {}).get("index") if resume else None)
    elif choice is not None:
        manifest["index"] = (old or {}).get("index")
    manifest["updated"] = time.time()
    objstore.write_json(manifest_url, manifest, so)
    t_planned = time.time()

    records = []
    with ray_session(address, num_cpus, num_gpus, init_kwargs) as ray:
        t_ready = time.time()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        window = max_blocks_in_flight or max(2, 2 * cpus // max(1, len(plan.partitions)) + 1)
        task_opts = {"num_cpus": 1, "max_retries": int(max_retries), "retry_exceptions": [OSError]}
        if gpus_per_task:
            task_opts["num_gpus"] = gpus_per_task
        g_ref, r_ref = ray.put(gallery), ray.put(reference)
        if choice is None:
            part_fn = ray.remote(partial_topk_task).options(**task_opts)
            merge_fn = ray.remote(merge_bias_task).options(num_cpus=1, max_retries=int(max_retries),
                                                           retry_exceptions=[OSError])

            def submit(b):
                g0, g1 = blocks[b]
                parts = [part_fn.remote(g_ref, g0, g1, r_ref, r0, r1, k, metric, gpus_per_task, _task_delay)
                         for r0, r1 in plan.partitions]
                return merge_fn.remote(b, g0, g1, alpha, k, output_url, so, bool(save_topk), *parts)
        else:
            index_fn = ray.remote(index_bias_task).options(**{**task_opts, "num_gpus": 0})
            blob_ref = ray.put(blob)  # once: every task on a node maps the same object-store copy
            key = manifest["index"]["index_sha"]

            def submit(b):
                g0, g1 = blocks[b]
                return index_fn.remote(key, blob_ref, b, gallery=g_ref, g0=g0, g1=g1, reference=r_ref, k=k,
                                       metric=metric, alpha=alpha, output_url=output_url, storage_options=so,
                                       save_topk=bool(save_topk), delay=_task_delay)

        def on_done(b, rec):
            records.append(rec)
            manifest["blocks_done"][str(b)] = {
                "rows": rec["rows"], "file": f"blocks/bias_{b:06d}.npy", "finished": time.time(),
                "task_seconds": round(sum(t["seconds"] for t in rec["tasks"]), 4),
                "devices": sorted({str(t["cuda_visible_devices"]) for t in rec["tasks"]})}
            manifest["updated"] = time.time()
            objstore.write_json(manifest_url, manifest, so)  # commit: this block is done

        _run_windowed(ray, todo, submit, window, on_done, progress, len(blocks), skipped)
    t_end = time.time()
    tasks = [t for r in records for t in r["tasks"]]
    return {"output": output_url, "plan": plan.as_dict(), "blocks": len(blocks), "blocks_computed": len(records),
            "blocks_skipped": skipped, "tasks_run": len(tasks),
            "seconds": {"plan": t_planned - t_start, "ray_start": t_ready - t_planned,
                        "compute": t_end - t_ready, "total": t_end - t_start},
            "task_seconds": [t["seconds"] for t in tasks], "task_bytes_read": [t["bytes_read"] for t in tasks],
            "task_flop": [t["flop"] for t in tasks], "task_devices": [t["cuda_visible_devices"] for t in tasks],
            "task_windows": [(t["pid"], t["t0"], t["t1"], t["cuda_visible_devices"]) for t in tasks],
            "merge_seconds": [r["merge_seconds"] for r in records],
            **({"index": manifest.get("index"), "index_rows_recomputed_exactly":
                sum(r.get("rows_recomputed_exactly", 0) for r in records),
                "index_deserializations": sum(bool(t.get("index_deserialized")) for t in tasks)}
               if choice is not None else {})}


def _run_windowed(ray, items, submit, window: int, on_done, progress: ProgressFn | None, total: int,
                  done: int = 0) -> None:
    """Submit ``submit(item)`` for each item with at most ``window`` in flight; ``on_done(item, result)``
    on the driver as each finishes (in completion order)."""
    pending: dict = {}
    queue = list(items)
    if progress:
        progress(done, total)
    while queue or pending:
        while queue and len(pending) < window:
            item = queue.pop(0)
            pending[submit(item)] = item
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            item = pending.pop(ref)
            on_done(item, ray.get(ref))
            done += 1
            if progress:
                progress(done, total)


def _round_up(n: int, m: int) -> int:
    return max(m, -(-int(n) // m) * m)


def _comparable(x):
    import json

    return json.loads(json.dumps(x, sort_keys=True))


# ---------------------------------------------------------------------------
# Incremental: --append-to (new gallery rows as new blocks), --update --reference-add (new queries)
# ---------------------------------------------------------------------------
def merge_update_task(block: int, g0: int, g1: int, alpha: float, k: int, output_url: str, storage_options: dict,
                      old_topk_file: str, bias_file: str, topk_file: str, *partials):
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
    return {"block": block, "rows": [g0, g1], "merge_seconds": time.time() - t0,
            "tasks": [info for _, info in partials]}


@contextlib.contextmanager
def run_lock(run_url: str, storage_options: dict | None, wait: float):
    """The exclusive lock of a local run folder (``.manifest.json.lock``); URLs on object stores get none:
    concurrent writers of one run there are not serialized."""
    fs, path = objstore.url_fs(run_url, storage_options)
    if not objstore.is_local(fs):
        yield None
        return
    from nnn_cli.data.locks import exclusive_lock

    with exclusive_lock(os.path.join(path, MANIFEST), wait, "bias run folder") as held:
        yield held


def _complete_manifest(run_url: str, so: dict, what: str) -> dict:
    m = read_manifest(run_url, so)
    n_blocks = m["plan"]["blocks"]
    missing = [b for b in range(n_blocks) if str(b) not in m["blocks_done"]]
    if missing:
        raise InputError(f"{run_url}: unfinished ({len(missing)} of {n_blocks} blocks not done): finish it with "
                         f"--resume before {what}")
    if m.get("index"):  # an index was used (not: --index auto that chose the exact path)
        raise ParameterError(f"{run_url}: made through an index ({m['index'].get('index_description')}); "
                             f"{what} is exact and needs an exact run: recompute it into a new folder")
    return m


def _check_run_params(m: dict, run_url: str, alpha, k, metric) -> None:
    from nnn_cli.data.provenance import same_number

    p = m["params"]
    for name, given, stored in (("alpha", alpha, p["alpha"]), ("k", k, p["k"]), ("metric", metric, p["metric"])):
        if given is not None and (given != stored if name == "metric" else not same_number(given, stored)):
            raise MismatchError(f"{run_url}: the run was made with {name}={stored!r}, not {given!r}; drop the "
                                "option (it is taken from the manifest) or recompute into a new folder")


def _open_parts(records: list[dict], given, so: dict, what: str, run_url: str) -> list[tuple[objstore.UrlSource, int]]:
    """[(source, first global row)] for an input recorded in parts: part 0 is ``given`` (checked against its
    record), later parts (added by --append-to / --update) are reopened from their recorded URLs and checked."""
    out, start = [], 0
    for i, rec in enumerate(records):
        src = given if i == 0 else open_input(rec["url"], so, f"{what} part {i}")
        fp = src.cheap_fingerprint()
        if list(src.shape) != list(rec["shape"]) or fp != rec["fingerprint"]:
            where = "the given " + what if i == 0 else f"{rec['url']} ({what} part {i}, added later)"
            raise MismatchError(f"{run_url}: {where} is not the {what} the run was made with (shape "
                                f"{list(src.shape)} vs {rec['shape']}, sampled fingerprint {fp[:12]} vs "
                                f"{rec['fingerprint'][:12]})")
        out.append((src, start))
        start += src.n
    return out


def _session_window(ray, partitions: int) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(2, 2 * cpus // max(1, partitions) + 1)


def ray_append(new_items_url, reference_url, run_url: str, *, alpha: float | None = None, k: int | None = None,
               metric: str | None = None, address: str | None = None, gpus_per_task: float = 0,
               max_retries: int = 3, progress: ProgressFn | None = None, storage_options: dict | None = None,
               wait: float = 10.0, num_cpus: int | None = None, num_gpus: int | None = None,
               init_kwargs: dict | None = None, **_ignored) -> dict:
    """Append new gallery rows to a finished exact run (``run_url``) as new blocks: each new block's top-k
    against every reference part (exactly as a fresh run computes it), then ONE manifest rewrite records the
    blocks and the new gallery part (its URL, shape and fingerprint).  Old blocks are not touched."""
    t_start = time.time()
    so = dict(storage_options or {})
    with run_lock(run_url, so, wait):
        m = _complete_manifest(run_url, so, "--append-to")
        _check_run_params(m, run_url, alpha, k, metric)
        p, plan = m["params"], m["plan"]
        alpha, k, metric = p["alpha"], p["k"], p["metric"]
        new = open_input(new_items_url, so, "new gallery items")
        refs = _open_parts([m["inputs"]["reference"]] + m["inputs"].get("reference_parts", []),
                           open_input(reference_url, so, "reference"), so, "reference", run_url)
        if new.dim != refs[0][0].dim:
            raise MismatchError(f"dimension mismatch: new items d={new.dim}, reference d={refs[0][0].dim}")
        n_old, b_old, rows = plan["n_rows"], plan["blocks"], plan["block_rows"]
        new_blocks = [(b_old + j, s, min(new.n, s + rows)) for j, s in enumerate(range(0, new.n, rows))]
        parts = [(src, r0, min(src.n, r0 + plan["partition_rows"])) for src, _ in refs
                 for r0 in range(0, src.n, plan["partition_rows"])]
        records: dict = {}
        with ray_session(address, num_cpus, num_gpus, init_kwargs) as ray:
            opts = {"num_cpus": 1, "max_retries": int(max_retries), "retry_exceptions": [OSError]}
            if gpus_per_task:
                opts["num_gpus"] = gpus_per_task
            part_fn = ray.remote(partial_topk_task).options(**opts)
            merge_fn = ray.remote(merge_bias_task).options(num_cpus=1, max_retries=int(max_retries),
                                                           retry_exceptions=[OSError])
            n_ref = ray.put(new)
            put = {id(src): ray.put(src) for src, _ in refs}

            def submit(item):
                b, s0, s1 = item
                partials = [part_fn.remote(n_ref, s0, s1, put[id(src)], r0, r1, k, metric, gpus_per_task)
                            for src, r0, r1 in parts]
                return merge_fn.remote(b, n_old + s0, n_old + s1, alpha, k, run_url, so,
                                       bool(p.get("save_topk", True)), *partials)

            _run_windowed(ray, new_blocks, submit, _session_window(ray, len(parts)),
                          lambda item, rec: records.__setitem__(item[0], rec), progress, len(new_blocks))
        for b, _, _ in new_blocks:
            rec = records[b]
            m["blocks_done"][str(b)] = {"rows": rec["rows"], "file": f"blocks/bias_{b:06d}.npy",
                                        "finished": time.time(),
                                        "task_seconds": round(sum(t["seconds"] for t in rec["tasks"]), 4)}
        m["inputs"].setdefault("gallery_parts", []).append({**_input_record(new), "rows": [n_old, n_old + new.n]})
        plan.update(n_rows=n_old + new.n, blocks=b_old + len(new_blocks),
                    tasks=plan.get("tasks", 0) + len(new_blocks) * len(parts))
        m.setdefault("history", []).append({"op": "append", "rows": [n_old, n_old + new.n], "time": time.time(),
                                            "blocks": [b_old, b_old + len(new_blocks)]})
        m["updated"] = time.time()
        objstore.write_json(objstore.join(run_url, MANIFEST), m, so)  # the commit
    return {"output": run_url, "operation": "append", "n_added": new.n, "n_gallery": n_old + new.n,
            "blocks_added": len(new_blocks), "tasks_run": len(new_blocks) * len(parts), "alpha": alpha, "k": k,
            "metric": metric, "seconds": {"total": time.time() - t_start}}


def ray_add_reference(gallery_url, new_reference_url, run_url: str, *, alpha: float | None = None,
                      k: int | None = None, metric: str | None = None, address: str | None = None,
                      gpus_per_task: float = 0, max_retries: int = 3, progress: ProgressFn | None = None,
                      storage_options: dict | None = None, wait: float = 10.0, num_cpus: int | None = None,
                      num_gpus: int | None = None, init_kwargs: dict | None = None, **_ignored) -> dict:
    """Fold new reference queries into a finished exact run saved with top-k: one task per (block, new
    partition), merged with the block's stored top-k; new block files are written under new names
    (``.gN``), then ONE manifest rewrite switches to them and records the new reference part (the commit:
    a crash before it leaves the run as it was); the replaced files are then removed."""
    t_start = time.time()
    so = dict(storage_options or {})
    with run_lock(run_url, so, wait):
        m = _complete_manifest(run_url, so, "--update")
        _check_run_params(m, run_url, alpha, k, metric)
        p, plan = m["params"], m["plan"]
        if not p.get("save_topk", True):
            raise ParameterError(f"{run_url}: the run was made without top-k (--no-store-topk), so new reference "
                                 "queries cannot be merged in; recompute with the reference and the new queries")
        alpha, k, metric = p["alpha"], p["k"], p["metric"]
        gallery_parts = _open_parts([m["inputs"]["gallery"]] + m["inputs"].get("gallery_parts", []),
                                    open_input(gallery_url, so, "gallery"), so, "gallery", run_url)
        new = open_input(new_reference_url, so, "new reference queries")
        if new.dim != gallery_parts[0][0].dim:
            raise MismatchError(f"dimension mismatch: new queries d={new.dim}, gallery d={gallery_parts[0][0].dim}")
        gen = int(m.get("generation", 0)) + 1
        blocks = sorted(int(b) for b in m["blocks_done"])
        news = [(r0, min(new.n, r0 + plan["partition_rows"])) for r0 in range(0, new.n, plan["partition_rows"])]
        records: dict = {}
        with ray_session(address, num_cpus, num_gpus, init_kwargs) as ray:
            opts = {"num_cpus": 1, "max_retries": int(max_retries), "retry_exceptions": [OSError]}
            if gpus_per_task:
                opts["num_gpus"] = gpus_per_task
            part_fn = ray.remote(partial_topk_task).options(**opts)
            merge_fn = ray.remote(merge_update_task).options(num_cpus=1, max_retries=int(max_retries),
                                                             retry_exceptions=[OSError])
            q_ref = ray.put(new)
            put = [ray.put(src) for src, _ in gallery_parts]

            def submit(b):
                rec = m["blocks_done"][str(b)]
                g0, g1 = rec["rows"]
                part = max(i for i, (_, start) in enumerate(gallery_parts) if start <= g0)
                start = gallery_parts[part][1]
                partials = [part_fn.remote(put[part], g0 - start, g1 - start, q_ref, r0, r1, k, metric, gpus_per_task)
                            for r0, r1 in news]
                return merge_fn.remote(b, g0, g1, alpha, k, run_url, so,
                                       rec.get("topk_file", f"blocks/topk_{b:06d}.npy"),
                                       f"blocks/bias_{b:06d}.g{gen}.npy", f"blocks/topk_{b:06d}.g{gen}.npy", *partials)

            _run_windowed(ray, blocks, submit, _session_window(ray, len(news)),
                          lambda b, rec: records.__setitem__(b, rec), progress, len(blocks))
        replaced = []
        for b in blocks:
            rec = m["blocks_done"][str(b)]
            replaced += [rec["file"], rec.get("topk_file", f"blocks/topk_{b:06d}.npy")]
            rec.update(file=f"blocks/bias_{b:06d}.g{gen}.npy", topk_file=f"blocks/topk_{b:06d}.g{gen}.npy",
                       finished=time.time())
        n_ref = sum(r["shape"][0] for r in [m["inputs"]["reference"]] + m["inputs"].get("reference_parts", []))
        m["inputs"].setdefault("reference_parts", []).append({**_input_record(new), "rows": [n_ref, n_ref + new.n]})
        m["generation"] = gen
        m.setdefault("history", []).append({"op": "reference-add", "rows": [n_ref, n_ref + new.n],
                                            "time": time.time(), "generation": gen})
        m["updated"] = time.time()
        objstore.write_json(objstore.join(run_url, MANIFEST), m, so)  # the commit
        fs, root = objstore.url_fs(run_url, so)
        for rel in replaced:  # best effort: a reader holding the previous manifest may still need them
            with contextlib.suppress(Exception):
                fs.rm(objstore.join(root, rel))
    return {"output": run_url, "operation": "reference-add", "n_added": new.n,
            "n_gallery": plan["n_rows"], "n_reference": n_ref + new.n, "blocks_rewritten": len(blocks),
            "tasks_run": len(blocks) * len(news), "generation": gen, "alpha": alpha, "k": k, "metric": metric,
            "seconds": {"total": time.time() - t_start}}


# ---------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------
def ray_search(queries_url, gallery_url, bias, top_k: int, metric: str = "cosine", *,
               address: str | None = None, gpus_per_task: float = 0,
               block_rows: int = DEFAULT_QUERY_BLOCK, partition_rows: int = DEFAULT_PARTITION_ROWS,
               max_retries: int = 3, progress: ProgressFn | None = None, storage_options: dict | None = None,
               num_cpus: int | None = None, init_kwargs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
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
            raise MismatchError(f"bias has {bias.shape[0] if bias.ndim else 0} entries but the gallery has {gallery.n} rows")
    if int(top_k) < 1:
        raise ParameterError(f"top_k must be >= 1, got {top_k}")
    top_k = min(int(top_k), gallery.n)
    plan = make_plan(queries.n, gallery.n, min(block_rows, _round_up(queries.n, DEFAULT_QUERY_BLOCK)),
                     min(partition_rows, _round_up(gallery.n, DATABASE_TILE)), block_multiple=DEFAULT_QUERY_BLOCK)
    scores = np.empty((queries.n, top_k), dtype=np.float32)
    indices = np.empty((queries.n, top_k), dtype=np.int64)
    with ray_session(address, num_cpus, None, init_kwargs) as ray:
        opts = {"num_cpus": 1, "max_retries": int(max_retries), "retry_exceptions": [OSError]}
        if gpus_per_task:
            opts["num_gpus"] = gpus_per_task
        fn = ray.remote(partial_search_task).options(**opts)
        q_ref, g_ref = ray.put(queries), ray.put(gallery)
        b_refs = [None if bias is None else ray.put(bias[r0:r1]) for r0, r1 in plan.partitions]
        futures = {}
        for bi, (q0, q1) in enumerate(plan.blocks):
            futures[bi] = [fn.remote(q_ref, q0, q1, g_ref, r0, r1, b_refs[pi], top_k, metric, gallery.n, gpus_per_task)
                           for pi, (r0, r1) in enumerate(plan.partitions)]
        for done, (bi, refs) in enumerate(futures.items(), 1):
            q0, q1 = plan.blocks[bi]
            parts = [(s, i) for s, i, _ in ray.get(refs)]
            scores[q0:q1], indices[q0:q1] = merge_search(parts, top_k)
            if progress:
                progress(done, len(plan.blocks))
    return scores, indices
