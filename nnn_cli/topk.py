"""Exact blocked top-k by inner product, deterministic (ties broken by the lower index).

The heavy lifting is faiss's flat inner-product search (BLAS GEMM plus a result
heap per query); we feed it query blocks so memory stays bounded, and re-sort
each result row by (score descending, index ascending) so that equal scores
come out in the same order on every run and thread count.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` by long-running library functions."""

DEFAULT_QUERY_BLOCK = 8192


def faiss_module():
    import faiss

    return faiss


def set_threads(threads: int | None) -> None:
    """Use ``threads`` OpenMP threads in faiss (None or 0 leaves the default: all cores)."""
    if threads:
        faiss_module().omp_set_num_threads(int(threads))


def flat_ip_index(database: np.ndarray):
    """A faiss ``IndexFlatIP`` holding ``database`` (float32, C-contiguous)."""
    faiss = faiss_module()
    database = np.ascontiguousarray(database, dtype=np.float32)
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    return index


def sort_ties(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each row by score descending, then index ascending."""
    order = np.lexsort((indices, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(indices, order, -1)


def search_index(index, queries: np.ndarray, k: int, block_rows: int = DEFAULT_QUERY_BLOCK,
                 progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``index`` for every query row, in query blocks; returns (scores, indices)."""
    nq = len(queries)
    k = int(min(k, index.ntotal))
    scores = np.empty((nq, k), dtype=np.float32)
    indices = np.empty((nq, k), dtype=np.int64)
    for start in range(0, nq, block_rows):
        stop = min(nq, start + block_rows)
        block = np.ascontiguousarray(queries[start:stop], dtype=np.float32)
        d, i = index.search(block, k)
        scores[start:stop], indices[start:stop] = sort_ties(d, i)
        if progress:
            progress(stop, nq)
    return scores, indices


def topk_inner_product(queries: np.ndarray, database: np.ndarray, k: int,
                       block_rows: int = DEFAULT_QUERY_BLOCK,
                       progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``database`` by inner product for each query row."""
    return search_index(flat_ip_index(database), queries, k, block_rows, progress)
