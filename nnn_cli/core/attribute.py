"""Attribute bias of retrieval (paper Section 3.3): ``(#a - #b) / n`` over each query's top n.

Each gallery item carries a label: group ``a``, group ``b`` or neither (e.g.
perceived gender on VisoGender images); the queries are attribute-neutral
("the doctor and their stethoscope").  Bias 0 means the top-n lists are
balanced on average; the paper reports it at n = 6 and 10 before and after
NNN, beside precision@n (share of the top n that are correct items).
"""

from __future__ import annotations

import numpy as np

from nnn_cli.errors import ParameterError
from nnn_cli.core.truth import Truth
from nnn_cli.core.search import DebiasedIndex
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK

LABEL_A, LABEL_B, LABEL_NONE = 1, 0, -1


def attribute_bias(topk: np.ndarray, labels: np.ndarray, n: int) -> float:
    """Mean over queries of ``(#a - #b) / n`` in the first ``n`` columns of ``topk``."""
    if n < 1 or n > topk.shape[1]:
        raise ParameterError(f"n={n} must be between 1 and {topk.shape[1]}")
    top = labels[topk[:, :n]]
    return float(np.mean(((top == LABEL_A).sum(axis=1) - (top == LABEL_B).sum(axis=1)) / n))


def precision_at(topk: np.ndarray, truth: Truth, n: int) -> float:
    """Mean over queries with truth of the share of their top ``n`` that are correct items."""
    pairs = np.unique(np.stack([truth.query, truth.gallery], axis=1), axis=0)
    hits = (topk[pairs[:, 0], :n] == pairs[:, 1][:, None]).any(axis=1)
    per_query = np.bincount(pairs[:, 0], weights=hits, minlength=truth.n_queries)
    has = truth.has_truth()
    return float(np.mean(per_query[has] / n)) if has.any() else 0.0


def compare_attribute_bias(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray, bias: np.ndarray,
                           ns=(6, 10), truth: Truth | None = None,
                           block_rows: int = DEFAULT_QUERY_BLOCK) -> dict:
    """Bias (and precision@n with ``truth``) of the top n before and after NNN, for each n in ``ns``."""
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ParameterError("--n values must be integers >= 1")
    if ns[-1] > len(gallery):
        raise ParameterError(f"n={ns[-1]} is larger than the gallery ({len(gallery)} items)")
    if len(labels) != len(gallery):
        raise ParameterError(f"{len(labels)} labels for {len(gallery)} gallery items")
    rankings = {"baseline": DebiasedIndex(gallery).search(queries, ns[-1], block_rows)[1],
                "nnn": DebiasedIndex(gallery, bias).search(queries, ns[-1], block_rows)[1]}
    out: dict = {"at": {}}
    for n in ns:
        rec = {}
        for name, topk in rankings.items():
            rec[name] = {"bias": attribute_bias(topk, labels, n)}
            if truth is not None:
                rec[name]["precision"] = precision_at(topk, truth, n)
        out["at"][str(n)] = rec
    out["n_label_a"] = int((labels == LABEL_A).sum())
    out["n_label_b"] = int((labels == LABEL_B).sum())
    return out
