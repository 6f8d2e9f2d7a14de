"""Attribute bias of retrieval (paper Section 3.3): ``(#a - #b) / n`` over each query's top n.

Each gallery item carries a label: group ``a``, group ``b`` or neither (e.g.
perceived gender on VisoGender images); the queries are attribute-neutral
("the doctor and their stethoscope").  Bias 0 means the top-n lists are
balanced on average.  The paper (Section 3.3, Fig. 3) reports the bias at
n = 6 and 10 as a mean over *occupations* (groups of queries), with its
distribution across occupations, and precision (share of the top n that are
correct items) at n = 1 and 5.  :func:`compare_attribute_bias` does that when
given ``query_groups``; without them every query is its own group (the mean
over queries).  Which label is group ``a`` must be stated: the sign of the
bias depends on it (:func:`check_explicit_groups`).
"""

from __future__ import annotations

import numpy as np

from nnn_cli.core.search import DebiasedIndex
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK
from nnn_cli.core.truth import Truth
from nnn_cli.errors import ParameterError

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


def per_query_bias(topk: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(Q,) float64 ``(#a - #b) / n`` of each query's first ``n`` columns."""
    if n < 1 or n > topk.shape[1]:
        raise ParameterError(f"n={n} must be between 1 and {topk.shape[1]}")
    top = labels[topk[:, :n]]
    return ((top == LABEL_A).sum(axis=1) - (top == LABEL_B).sum(axis=1)) / n


def group_means(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups,) mean of ``values`` over the queries of each group (NaN for an empty group; -1 = ungrouped)."""
    keep = groups >= 0
    sums = np.bincount(groups[keep], weights=values[keep], minlength=n_groups)
    counts = np.bincount(groups[keep], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def precision_per_query(topk: np.ndarray, truth: Truth, n: int) -> np.ndarray:
    """(Q,) share of each query's top ``n`` that are correct items (NaN for queries without truth)."""
    pairs = np.unique(np.stack([truth.query, truth.gallery], axis=1), axis=0)
    hits = (topk[pairs[:, 0], :n] == pairs[:, 1][:, None]).any(axis=1)
    per_query = np.bincount(pairs[:, 0], weights=hits, minlength=truth.n_queries) / n
    return np.where(truth.has_truth(), per_query, np.nan)


def grouped_attribute_bias(topk: np.ndarray, labels: np.ndarray, n: int, query_groups: np.ndarray, group_names) -> dict:
    """Paper Section 3.3: bias per query group (e.g. occupation), their mean, and the mean over queries.

    ``{"bias": mean over groups, "bias_mean_over_queries", "per_group": {name: bias}}``;
    queries with group -1 are left out of the group figures.
    """
    values = per_query_bias(topk, labels, n)
    per = group_means(values, np.asarray(query_groups, dtype=np.int64), len(group_names))
    present = ~np.isnan(per)
    return {
        "bias": float(per[present].mean()) if present.any() else 0.0,
        "bias_mean_over_queries": float(values.mean()) if len(values) else 0.0,
        "per_group": {str(name): float(v) for name, v, ok in zip(group_names, per, present) if ok},
    }


def compare_attribute_bias(
    queries: np.ndarray,
    gallery: np.ndarray,
    labels: np.ndarray,
    bias: np.ndarray,
    ns=(6, 10),
    truth: Truth | None = None,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    query_groups: np.ndarray | None = None,
    group_names=None,
    precision_ns=None,
) -> dict:
    """Bias (and precision@n with ``truth``) of the top n before and after NNN, for each n in ``ns``.

    Without ``query_groups`` this is the old output: ``at[n][method]`` holds
    ``bias`` (mean over queries) and, with ``truth``, ``precision`` at that n.
    With ``query_groups`` ((Q,) int group of each query, -1 = none, names in
    ``group_names``), ``at[n][method]`` holds the paper's figures: ``bias``
    (mean over groups), ``bias_mean_over_queries`` and ``per_group``; and
    with ``truth``, ``precision_at[m][method]`` for each m in ``precision_ns``
    (default 1 and 5, as the paper), as a mean over groups, with its per-group values.
    """
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ParameterError("--n values must be integers >= 1")
    if ns[-1] > len(gallery):
        raise ParameterError(f"n={ns[-1]} is larger than the gallery ({len(gallery)} items)")
    if len(labels) != len(gallery):
        raise ParameterError(f"{len(labels)} labels for {len(gallery)} gallery items")
    grouped = query_groups is not None
    if grouped:
        query_groups = np.asarray(query_groups, dtype=np.int64)
        if query_groups.shape != (len(queries),):
            raise ParameterError(f"{len(query_groups)} query groups for {len(queries)} queries")
        group_names = (
            list(group_names)
            if group_names is not None
            else [str(i) for i in range(int(query_groups.max(initial=-1)) + 1)]
        )
        if query_groups.max(initial=-1) >= len(group_names):
            raise ParameterError("a query group index is beyond the group names")
    pns = sorted({int(m) for m in (precision_ns if precision_ns is not None else ((1, 5) if grouped else ()))})
    if pns and (pns[0] < 1 or pns[-1] > len(gallery)):
        raise ParameterError(f"precision n values must be between 1 and {len(gallery)}")
    depth = max(ns[-1], pns[-1] if pns else 1)
    rankings = {
        "baseline": DebiasedIndex(gallery).search(queries, depth, block_rows)[1],
        "nnn": DebiasedIndex(gallery, bias).search(queries, depth, block_rows)[1],
    }
    out: dict = {"at": {}}
    for n in ns:
        rec = {}
        for name, topk in rankings.items():
            if query_groups is not None:
                rec[name] = grouped_attribute_bias(topk, labels, n, query_groups, group_names)
            else:
                rec[name] = {"bias": attribute_bias(topk, labels, n)}
                if truth is not None:
                    rec[name]["precision"] = precision_at(topk, truth, n)
        out["at"][str(n)] = rec
    if truth is not None and pns:
        out["precision_at"] = {}
        for m in pns:
            rec = {}
            for name, topk in rankings.items():
                values = precision_per_query(topk, truth, m)
                has = ~np.isnan(values)
                entry: dict[str, object] = {
                    "precision_mean_over_queries": float(values[has].mean()) if has.any() else 0.0
                }
                if query_groups is not None:
                    per = group_means(np.where(has, values, 0.0), np.where(has, query_groups, -1), len(group_names))
                    ok = ~np.isnan(per)
                    entry["precision"] = float(per[ok].mean()) if ok.any() else 0.0
                    entry["per_group"] = {str(g): float(v) for g, v, k in zip(group_names, per, ok) if k}
                else:
                    entry["precision"] = entry["precision_mean_over_queries"]
                rec[name] = entry
            out["precision_at"][str(m)] = rec
    if query_groups is not None:
        out["n_groups"] = int(len(np.unique(query_groups[query_groups >= 0])))
        out["bias_is"] = "mean over query groups"
    out["n_label_a"] = int((labels == LABEL_A).sum())
    out["n_label_b"] = int((labels == LABEL_B).sum())
    return out
