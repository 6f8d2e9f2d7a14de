"""Retrieval metrics: Recall@K (percent) and hubness of rank-1 retrievals.

Hubness follows the paper's Table 3: count, for each gallery item, how many
queries retrieve it at rank 1, and summarise that distribution (max,
skewness, excess kurtosis, mean absolute deviation, share never retrieved).
"""

from __future__ import annotations

import numpy as np

from nnn_cli.core.truth import Truth

DEFAULT_KS = (1, 5, 10)


def recall_at(first_hit_rank: np.ndarray, has_truth: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    """``{"R@K": percent}``: share of queries (with truth) whose first correct item ranks < K."""
    ranks = np.asarray(first_hit_rank)[has_truth]
    n = max(1, len(ranks))
    return {f"R@{k}": float(100.0 * np.count_nonzero(ranks < k) / n) for k in ks}


def recall_from_topk(topk_indices: np.ndarray, truth: Truth, ks=DEFAULT_KS) -> dict[str, float]:
    """Recall@K for each K in ``ks`` from (Q, >= max(ks)) ranked gallery indices."""
    return recall_at(truth.first_hit_rank(topk_indices), truth.has_truth(), ks)


def retrieval_counts(top1: np.ndarray, n_gallery: int) -> np.ndarray:
    """(N,) int64: how many queries retrieve each gallery item at rank 1."""
    return np.bincount(np.asarray(top1, dtype=np.int64), minlength=n_gallery)


def hubness(top1: np.ndarray, n_gallery: int) -> dict[str, float]:
    """Summary of the rank-1 retrieval-count distribution over gallery items."""
    counts = retrieval_counts(top1, n_gallery).astype(np.float64)
    mean = counts.mean()
    centred = counts - mean
    var = float(np.mean(centred ** 2))
    if var > 0:
        skew = float(np.mean(centred ** 3) / var ** 1.5)
        kurt = float(np.mean(centred ** 4) / var ** 2 - 3.0)
    else:
        skew = kurt = 0.0
    return {
        "max": int(counts.max()),
        "skewness": skew,
        "kurtosis": kurt,
        "mae": float(np.mean(np.abs(centred))),
        "never_retrieved": float(np.mean(counts == 0)),
    }
