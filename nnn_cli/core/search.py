"""Debiased search with any inner-product index: ``r' = [r, b]``, ``q' = [q, -1]``.

``q' . r' = q . r - b(r)``, so an ordinary inner-product index over the
augmented gallery returns NNN-debiased rankings at the cost of plain search.
The exact index here is BLAS GEMM tiles + O(n) top-k selection
(:class:`~nnn_cli.core.topk.GemmIndex`); approximate faiss indexes over the same
augmented vectors live in :mod:`nnn_cli.scale.index`.
"""

from __future__ import annotations

import numpy as np

from nnn_cli.core.nnn import check_same_dims
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, GemmIndex, ProgressFn, search_blocks
from nnn_cli.errors import MismatchError


def augment_gallery(gallery: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(N, d+1) float32 ``[r, b]``."""
    bias = np.asarray(bias, dtype=np.float32)
    if bias.shape != (len(gallery),):
        raise MismatchError(
            f"bias has {bias.shape[0] if bias.ndim else 0} entries but the gallery has {len(gallery)} rows"
        )
    return np.hstack([np.asarray(gallery, dtype=np.float32), bias[:, None]])


def augment_queries(queries: np.ndarray) -> np.ndarray:
    """(Q, d+1) float32 ``[q, -1]``."""
    q = np.asarray(queries, dtype=np.float32)
    return np.hstack([q, -np.ones((len(q), 1), dtype=np.float32)])


class DebiasedIndex:
    """An exact inner-product index over ``[r, b]``; ``search`` takes plain query vectors.

    With ``bias=None`` it is the plain (baseline) index over ``r``.
    """

    def __init__(self, gallery: np.ndarray, bias: np.ndarray | None = None):
        self.debiased = bias is not None
        self.ntotal = len(gallery)
        self.dim = gallery.shape[1]
        self.index = GemmIndex(augment_gallery(gallery, bias) if bias is not None else gallery)

    def search(
        self, queries: np.ndarray, k: int, block_rows: int = DEFAULT_QUERY_BLOCK, progress: ProgressFn | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (Q, min(k, N)), best first; scores are debiased when a bias was given."""
        check_same_dims([("queries", queries.shape[1]), ("gallery", self.dim)])
        if not self.debiased:
            return search_blocks(self.index, queries, k, block_rows, progress)
        return search_blocks(_AugmentingIndex(self.index), queries, k, block_rows, progress)


class _AugmentingIndex:
    """Wraps a faiss index over [r, b] so that each query block is augmented with -1 on the fly."""

    def __init__(self, index):
        self.index = index
        self.ntotal = index.ntotal

    def search(self, block: np.ndarray, k: int):
        return self.index.search(augment_queries(block), k)


def search(
    queries: np.ndarray,
    gallery: np.ndarray,
    bias: np.ndarray | None,
    top_k: int,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``top_k`` gallery rows for each query by ``q . r - b(r)`` (plain ``q . r`` if ``bias`` is None)."""
    return DebiasedIndex(gallery, bias).search(queries, top_k, block_rows, progress)
