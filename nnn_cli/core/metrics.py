"""Retrieval metrics: Recall@K (percent) and hubness.

Hubness: ``N_k(r)`` is how many queries have gallery item ``r`` in their top
k.  The NNN paper's Table 3 reports three statistics of ``N_1`` over all
gallery items: kurtosis, MAE and max.  :func:`hubness` returns, for k = 1
and (given a top-10 ranking) k = 10, each under an explicit name:

* ``N{k}_kurtosis``: excess (Fisher) kurtosis of ``N_k`` over all gallery items;
* ``N{k}_mae``: mean absolute deviation of ``N_k`` from its mean (the mean is
  the number of correct queries per item when every item has equally many,
  e.g. COCO/Flickr's 5 captions per image, so it is also the MAE against that);
* ``N{k}_max``: the largest ``N_k`` (the biggest hub);
* ``N{k}_skewness``: skewness of ``N_k`` over all gallery items;
* ``N{k}_skewness_dbnorm``: skewness as DBNorm's ``get_skewness`` computes it:
  ``scipy.stats.skew`` (biased) of the counts of the items that appear in
  some top-k list only (DBNorm reports k = 10).

The unprefixed keys ``max``, ``skewness``, ``kurtosis``, ``mae`` and
``never_retrieved`` are the ``N_1`` figures over all items, as before.
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


def _moments(counts: np.ndarray) -> tuple[float, float, float]:
    """(skewness, excess kurtosis, mean absolute deviation) of ``counts`` (population moments)."""
    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) == 0:
        return 0.0, 0.0, 0.0
    centred = counts - counts.mean()
    var = float(np.mean(centred**2))
    if var > 0:
        skew = float(np.mean(centred**3) / var**1.5)
        kurt = float(np.mean(centred**4) / var**2 - 3.0)
    else:
        skew = kurt = 0.0
    return skew, kurt, float(np.mean(np.abs(centred)))


def occurrence_counts(topk: np.ndarray, n_gallery: int, k: int) -> np.ndarray:
    """(N,) int64 ``N_k``: how many queries have each gallery item in their first ``k`` columns."""
    topk = np.asarray(topk, dtype=np.int64)
    if topk.ndim == 1:
        topk = topk[:, None]
    return np.bincount(topk[:, :k].ravel(), minlength=n_gallery)


def hubness_at(topk: np.ndarray, n_gallery: int, k: int) -> dict[str, float]:
    """The named ``N_k`` statistics (see the module docstring) for one k."""
    counts = occurrence_counts(topk, n_gallery, k)
    skew, kurt, mae = _moments(counts)
    skew_db, _, _ = _moments(counts[counts > 0])
    return {
        f"N{k}_kurtosis": kurt,
        f"N{k}_mae": mae,
        f"N{k}_max": int(counts.max(initial=0)),
        f"N{k}_skewness": skew,
        f"N{k}_skewness_dbnorm": skew_db,
    }


def hubness(top: np.ndarray, n_gallery: int, ks=(1, 10)) -> dict[str, float]:
    """Hubness of a ranking: ``top`` is (Q,) rank-1 items or a (Q, K) ranking, best first.

    Returns the rank-1 figures under the old keys plus ``N{k}_*`` for each k in
    ``ks`` that the ranking has columns for.
    """
    top = np.asarray(top, dtype=np.int64)
    ranking = top[:, None] if top.ndim == 1 else top
    counts = retrieval_counts(ranking[:, 0], n_gallery).astype(np.float64)
    skew, kurt, mae = _moments(counts)
    out = {
        "max": int(counts.max(initial=0)),
        "skewness": skew,
        "kurtosis": kurt,
        "mae": mae,
        "never_retrieved": float(np.mean(counts == 0)) if len(counts) else 0.0,
    }
    for k in ks:
        if k <= ranking.shape[1]:
            out.update(hubness_at(ranking, n_gallery, k))
    return out
