"""Ray sessions and plans for `--engine ray`: a private local Ray or an existing cluster, the block x
partition plan on the fixed tile grid, the windowed submission loop, inputs by URL."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from nnn_cli.core.topk import DATABASE_TILE, QUERY_TILE, ProgressFn
from nnn_cli.data import objstore
from nnn_cli.errors import InputError, ParameterError
from nnn_cli.scale.ray.cluster import ray_session  # noqa: F401 - the cluster's lifecycle lives there

DEFAULT_BLOCK_ROWS = 64 * QUERY_TILE  # 65,536 gallery rows per task
DEFAULT_PARTITION_ROWS = 128 * DATABASE_TILE  # 1,048,576 reference rows per task
STREAM_ROWS = 8 * DATABASE_TILE  # reference rows fetched per ranged read inside a task


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    n_rows: int  # gallery rows (bias) or query rows (search): the blocked side
    n_stream: int  # reference rows (bias) or gallery rows (search): the partitioned side
    block_rows: int
    partition_rows: int

    @property
    def blocks(self) -> list[tuple[int, int]]:
        return [(s, min(self.n_rows, s + self.block_rows)) for s in range(0, self.n_rows, self.block_rows)]

    @property
    def partitions(self) -> list[tuple[int, int]]:
        return [(s, min(self.n_stream, s + self.partition_rows)) for s in range(0, self.n_stream, self.partition_rows)]

    def as_dict(self) -> dict:
        return {
            "n_rows": self.n_rows,
            "n_stream": self.n_stream,
            "block_rows": self.block_rows,
            "partition_rows": self.partition_rows,
            "blocks": len(self.blocks),
            "partitions": len(self.partitions),
            "tasks": len(self.blocks) * len(self.partitions),
        }


def make_plan(
    n_rows: int,
    n_stream: int,
    block_rows: int,
    partition_rows: int,
    block_multiple: int = QUERY_TILE,
    partition_multiple: int = DATABASE_TILE,
) -> Plan:
    """A plan on the fixed tile grid: block sizes a multiple of ``block_multiple``, partitions of ``partition_multiple``."""
    block_rows, partition_rows = int(block_rows), int(partition_rows)
    if block_rows < 1 or block_rows % block_multiple:
        raise ParameterError(f"block_rows must be a positive multiple of {block_multiple}, got {block_rows}")
    if partition_rows < 1 or partition_rows % partition_multiple:
        raise ParameterError(
            f"partition_rows must be a positive multiple of {partition_multiple}, got {partition_rows}"
        )
    return Plan(int(n_rows), int(n_stream), block_rows, partition_rows)


# ---------------------------------------------------------------------------
# Tasks (plain functions; wrapped with ray.remote(...) at submission)
# ---------------------------------------------------------------------------
def _task_info(t0: float, nbytes: int) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "t0": t0,
        "t1": time.time(),
        "seconds": time.time() - t0,
        "bytes_read": int(nbytes),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _use_cuda(gpus: float) -> bool:
    if not gpus:
        return False
    from nnn_cli.scale.device import torch_cuda

    return torch_cuda()


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
def open_input(spec, storage_options: dict | None = None, label: str = "embeddings") -> objstore.UrlSource:
    """A URL or plain path of a ``.npy`` shard folder or one ``.npy``, as a picklable ranged-read source."""
    s = str(spec)
    if not objstore.is_url(s) and s.lower().endswith((".h5", ".hdf5", ".he5")) or ".h5:" in s:
        raise InputError(
            f"{s}: --engine ray reads .npy shard folders or .npy files (HDF5 is not range-readable "
            "from object stores); convert with `nnn` to a folder of .npy shards"
        )
    return objstore.open_url(s, storage_options, label)


def _input_record(src: objstore.UrlSource) -> dict:
    return {
        "url": src.url,
        "shape": list(src.shape),
        "dtype": np.dtype(src.dtype).str,
        "shards": len(src.infos),
        "fingerprint": src.cheap_fingerprint(),
    }


def _run_windowed(
    ray, items, submit, window: int, on_done, progress: ProgressFn | None, total: int, done: int = 0
) -> None:
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


def _session_window(ray, partitions: int) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(2, 2 * cpus // max(1, partitions) + 1)


def task_options(max_retries: int, gpus_per_task: float = 0) -> dict:
    """Ray options of a compute task: one CPU (its BLAS is single-threaded), retried on worker death and on
    I/O errors, and ``gpus_per_task`` GPUs when asked; a merge task takes them without the GPUs."""
    opts = {"num_cpus": 1, "max_retries": int(max_retries), "retry_exceptions": [OSError]}
    if gpus_per_task:
        opts["num_gpus"] = gpus_per_task
    return opts
