"""Out-of-core exact bias: stream the reference (and, if needed, the gallery) in blocks.

For each resident gallery chunk the reference is read block by block (the next block read ahead by a
thread while the current one is scored); every block's scores are folded into a running (rows, k) top-k.  The GEMM tiles are
the same as the in-memory path's (:mod:`nnn_cli.core.topk`), so the result is
bit-identical to ``reference_topk`` on fully loaded arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from nnn_cli.core.nnn import bias_from_topk, check_k, check_same_dims
from nnn_cli.core.topk import DATABASE_TILE, QUERY_TILE, ProgressFn, RunningTopScores
from nnn_cli.data.readahead import read_ahead
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.scale.budget import BlockPlan


def iter_streamed_topk(
    gallery: EmbeddingSource,
    reference: EmbeddingSource,
    k: int,
    metric: str,
    plan: BlockPlan,
    progress: ProgressFn | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_row, topk)`` per gallery chunk, ``topk`` (rows, k) float32 descending."""
    check_same_dims([(f"gallery {gallery.name}", gallery.dim), (f"reference {reference.name}", reference.dim)])
    k = check_k(k, reference.n)
    if plan.gallery_rows % QUERY_TILE or plan.reference_rows % DATABASE_TILE:
        raise ValueError("block plan must use multiples of the GEMM tiles")
    chunks = -(-gallery.n // plan.gallery_rows)
    passes_total = chunks * reference.n
    done = 0
    for g_start, g_chunk in gallery.iter_blocks(metric, plan.gallery_rows):
        running = RunningTopScores(g_chunk, k)
        for r_start, r_block in read_ahead(reference.iter_blocks(metric, plan.reference_rows)):
            running.add(r_block, last=r_start + len(r_block) >= reference.n)
            done += len(r_block)
            if progress:
                progress(done, passes_total)
        yield g_start, running.result()


def streamed_reference_topk(
    gallery: EmbeddingSource,
    reference: EmbeddingSource,
    k: int,
    metric: str,
    plan: BlockPlan,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(N, k) float32 top-k reference scores, streamed; identical to the in-memory result."""
    out = np.empty((gallery.n, min(k, reference.n)), dtype=np.float32)
    for start, topk in iter_streamed_topk(gallery, reference, k, metric, plan, progress):
        out[start : start + len(topk)] = topk
    return out


def streamed_bias(
    gallery: EmbeddingSource,
    reference: EmbeddingSource,
    alpha: float,
    k: int,
    metric: str,
    plan: BlockPlan,
    keep_topk: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(bias (N,), topk (N, k) or None): the exact NNN bias computed out of core.

    ``keep_topk=False`` holds only the (N,) biases, so memory does not grow with N x k.
    """
    k = check_k(k, reference.n)  # alpha is validated where the request is built
    bias = np.empty(gallery.n, dtype=np.float32)
    topk_all = np.empty((gallery.n, k), dtype=np.float32) if keep_topk else None
    for start, topk in iter_streamed_topk(gallery, reference, k, metric, plan, progress):
        bias[start : start + len(topk)] = bias_from_topk(topk, alpha, k)
        if topk_all is not None:
            topk_all[start : start + len(topk)] = topk
    return bias, topk_all


def topk_scores_vs(
    queries: np.ndarray, reference, k: int, metric: str = "cosine", groups: Sequence[int] | None = None
) -> np.ndarray:
    """(Q, k) exact top-k scores of in-memory ``queries`` against an array or a streamed source; ``groups``:
    segments of the queries tiled on their own (:func:`~nnn_cli.core.topk.query_tiles`)."""
    if not isinstance(reference, EmbeddingSource):
        from nnn_cli.core.topk import topk_scores

        return topk_scores(queries, reference, k, groups=groups)
    running = RunningTopScores(queries, min(k, reference.n), groups=groups)
    for r_start, r_block in read_ahead(reference.iter_blocks(metric, DATABASE_TILE * max(1, running.workers))):
        running.add(r_block, last=r_start + len(r_block) >= reference.n)
    return running.result()
