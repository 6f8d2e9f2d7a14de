"""``--device cuda``: use a GPU where torch or faiss-gpu sees one, otherwise say so and use the CPU."""

from __future__ import annotations

import os
import sys

import numpy as np

NO_GPU_MESSAGE = "no GPU found (torch/faiss-gpu), using CPU"


def faiss_gpus() -> int:
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get else 0
    except RuntimeError:
        return 0


def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except RuntimeError:
        return False


DEVICES = ("auto", "cpu", "cuda")
_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")


def gpu_driver_present() -> bool:
    """False when this Linux machine shows no GPU driver at all: ``--device auto`` (the default) then
    decides for the CPU without importing torch (seconds per run)."""
    return sys.platform != "linux" or any(os.path.exists(node) for node in _GPU_NODES)


def resolve_device(device: str, strict: bool = False, torch_only: bool = False) -> tuple[str, str | None]:
    """(device to use, message or None), the one place ``--device`` is decided.

    ``auto`` is cuda when a GPU is seen, else cpu.  ``cuda`` without a GPU falls back to
    the CPU with :data:`NO_GPU_MESSAGE`, or with ``strict`` (``nnn embed``, where a silent
    20x slowdown would surprise) raises :class:`ParameterError`.  ``torch_only``: only
    torch's CUDA counts (models run in torch).
    """
    from nnn_cli.errors import ParameterError

    device = (device or "cpu").lower()
    if device not in DEVICES:
        raise ParameterError(f"unknown --device {device!r}: use auto, cpu or cuda")
    if device == "cpu":
        return "cpu", None
    has_gpu = gpu_driver_present() and (torch_cuda() or (not torch_only and faiss_gpus() > 0))
    if has_gpu:
        return "cuda", None
    if device == "auto":
        return "cpu", None
    if strict:
        raise ParameterError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    return "cpu", NO_GPU_MESSAGE


def cuda_topk_scores(queries: np.ndarray, database: np.ndarray, k: int, block_rows: int = 4096) -> np.ndarray:
    """(Q, k) exact top-k inner products on the GPU with torch (matmul + topk per query block), descending."""
    import torch

    db = torch.from_numpy(np.ascontiguousarray(database, dtype=np.float32)).cuda()
    k = int(min(k, db.shape[0]))
    out = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block_rows):
        q = torch.from_numpy(np.ascontiguousarray(queries[start : start + block_rows], dtype=np.float32)).cuda()
        out[start : start + len(q)] = torch.topk(q @ db.T, k, dim=1, sorted=True).values.cpu().numpy()
    return out


def faiss_module():
    """faiss, imported on first use (the exact path never needs it)."""
    import faiss

    return faiss


def set_threads(threads: int | None) -> None:
    """Use ``threads`` threads in our exact engine, faiss's OpenMP and numpy's BLAS (None or 0: all cores)."""
    from nnn_cli.core.topk import set_workers

    set_workers(threads)
    if threads:
        from threadpoolctl import threadpool_limits

        faiss_module().omp_set_num_threads(int(threads))
        threadpool_limits(int(threads), user_api="blas")
