"""Baseline vs NNN evaluation on queries with known correct gallery items."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from nnn_cli.core.metrics import DEFAULT_KS, hubness, recall_from_topk
from nnn_cli.core.search import DebiasedIndex
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, ProgressFn
from nnn_cli.core.truth import Truth


@dataclass
class MethodResult:
    """Recall@K (percent), hubness figures and wall time of one scoring method."""

    recall: dict[str, float]
    hubness: dict[str, float]
    seconds: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**self.recall, "hubness": self.hubness, "seconds": round(self.seconds, 4), **self.extra}


def evaluate_ranking(
    topk_indices: np.ndarray, truth: Truth, n_gallery: int, seconds: float, ks=DEFAULT_KS
) -> MethodResult:
    """Score a (Q, K) ranking: recall at each K and hubness (rank-1 figures, and N_1/N_10 named statistics)."""
    return MethodResult(recall_from_topk(topk_indices, truth, ks), hubness(topk_indices, n_gallery), seconds)


def evaluate_index(
    queries: np.ndarray,
    gallery: np.ndarray,
    truth: Truth,
    bias: np.ndarray | None,
    ks=DEFAULT_KS,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> MethodResult:
    """Rank the gallery for every query (debiased when ``bias`` is given) and score the ranking."""
    start = time.perf_counter()
    _, idx = DebiasedIndex(gallery, bias).search(queries, max(ks), block_rows, progress)
    return evaluate_ranking(idx, truth, len(gallery), time.perf_counter() - start, ks)
