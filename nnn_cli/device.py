"""``--device cuda``: use a GPU where torch or faiss-gpu sees one, otherwise say so and use the CPU."""

from __future__ import annotations

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


def resolve_device(device: str) -> tuple[str, str | None]:
    """(device to use, message or None): 'cuda' falls back to 'cpu' with :data:`NO_GPU_MESSAGE`."""
    device = (device or "cpu").lower()
    if device == "cpu":
        return "cpu", None
    if faiss_gpus() > 0 or torch_cuda():
        return "cuda", None
    return "cpu", NO_GPU_MESSAGE


def cuda_topk_scores(queries: np.ndarray, database: np.ndarray, k: int, block_rows: int = 4096) -> np.ndarray:
    """(Q, k) exact top-k inner products on the GPU with torch (matmul + topk per query block), descending."""
    import torch

    db = torch.from_numpy(np.ascontiguousarray(database, dtype=np.float32)).cuda()
    k = int(min(k, db.shape[0]))
    out = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block_rows):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + block_rows], dtype=np.float32)).cuda()
        out[start:start + len(q)] = torch.topk(q @ db.T, k, dim=1, sorted=True).values.cpu().numpy()
    return out
