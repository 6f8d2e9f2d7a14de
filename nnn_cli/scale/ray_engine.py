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
             num_gpus: int | None = None, init_kwargs: dict | None = None, _task_delay: float = 0.0) -> dict:
    """Exact NNN bias of every gallery row, as Ray tasks; writes ``output_url`` (a folder: manifest + blocks).

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
    plan = make_plan(gallery.n, reference.n, min(block_rows, _round_up(gallery.n, QUERY_TILE)),
                     min(partition_rows, _round_up(reference.n, DATABASE_TILE)))
    manifest = {"format": FORMAT, "kind": "bias",
                "inputs": {"gallery": _input_record(gallery), "reference": _input_record(reference)},
                "params": {"alpha": alpha, "k": k, "metric": metric, "save_topk": bool(save_topk)},
                "plan": plan.as_dict(), "blocks_done": {}}
    manifest_url = objstore.join(output_url, MANIFEST)
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
        part_fn = ray.remote(partial_topk_task).options(**task_opts)
        merge_fn = ray.remote(merge_bias_task).options(num_cpus=1, max_retries=int(max_retries),
                                                       retry_exceptions=[OSError])
        g_ref, r_ref = ray.put(gallery), ray.put(reference)
        pending: dict = {}
        queue = list(todo)
        done = skipped
        if progress:
            progress(done, len(blocks))
        while queue or pending:
            while queue and len(pending) < window:
                b = queue.pop(0)
                g0, g1 = blocks[b]
                parts = [part_fn.remote(g_ref, g0, g1, r_ref, r0, r1, k, metric, gpus_per_task, _task_delay)
                         for r0, r1 in plan.partitions]
                ref = merge_fn.remote(b, g0, g1, alpha, k, output_url, so, bool(save_topk), *parts)
                pending[ref] = b
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                b = pending.pop(ref)
                rec = ray.get(ref)
                records.append(rec)
                manifest["blocks_done"][str(b)] = {
                    "rows": rec["rows"], "file": f"blocks/bias_{b:06d}.npy", "finished": time.time(),
                    "task_seconds": round(sum(t["seconds"] for t in rec["tasks"]), 4),
                    "devices": sorted({str(t["cuda_visible_devices"]) for t in rec["tasks"]})}
                manifest["updated"] = time.time()
                objstore.write_json(manifest_url, manifest, so)  # commit: this block is done
                done += 1
                if progress:
                    progress(done, len(blocks))
    t_end = time.time()
    tasks = [t for r in records for t in r["tasks"]]
    return {"output": output_url, "plan": plan.as_dict(), "blocks": len(blocks), "blocks_computed": len(records),
            "blocks_skipped": skipped, "tasks_run": len(tasks),
            "seconds": {"plan": t_planned - t_start, "ray_start": t_ready - t_planned,
                        "compute": t_end - t_ready, "total": t_end - t_start},
            "task_seconds": [t["seconds"] for t in tasks], "task_bytes_read": [t["bytes_read"] for t in tasks],
            "task_flop": [t["flop"] for t in tasks], "task_devices": [t["cuda_visible_devices"] for t in tasks],
            "task_windows": [(t["pid"], t["t0"], t["t1"], t["cuda_visible_devices"]) for t in tasks],
            "merge_seconds": [r["merge_seconds"] for r in records]}


def _round_up(n: int, m: int) -> int:
    return max(m, -(-int(n) // m) * m)


def _comparable(x):
    import json

    return json.loads(json.dumps(x, sort_keys=True))


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
