"""Run several scoring methods on one query set and score them side by side.

Used by ``nnn eval --methods``: baseline, NNN and the paper's comparison
methods (:mod:`nnn_cli.core.baselines`), each timed end to end (its per-gallery
precomputation plus the search), with optional bootstrap confidence
intervals for every recall figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import numpy as np

from nnn_cli.core.baselines import (
    BANK_METHODS,
    GALLERY_BANK_WARNED,
    GALLERY_BANK_WARNING,
    METHOD_ALIASES,
    BaselineParams,
    rank_method,
)
from nnn_cli.core.evaluate import MethodResult, evaluate_ranking
from nnn_cli.core.metrics import DEFAULT_KS, hubness
from nnn_cli.core.nnn import compute_bias
from nnn_cli.core.search import DebiasedIndex
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, ProgressFn
from nnn_cli.core.truth import Truth
from nnn_cli.errors import ParameterError

TOP_K = max(DEFAULT_KS)


@dataclass
class MethodRun:
    """One method's scores and its (Q, 10) ranking (kept for plots and confidence intervals)."""

    result: MethodResult
    topk: np.ndarray


def bootstrap_recall(
    first_hit_rank: np.ndarray,
    has_truth: np.ndarray,
    n_resamples: int,
    seed: int = 0,
    ks=DEFAULT_KS,
    level: float = 0.95,
    max_cells: int = 4_000_000,
) -> dict[str, list[float]]:
    """``{"R@K_ci": [lo, hi]}``: percentile bootstrap interval of Recall@K (percent), resampling queries.

    Deterministic in ``seed``; resamples are drawn in chunks of at most
    ``max_cells`` indices so memory stays bounded.
    """
    if n_resamples < 1:
        raise ParameterError(f"--bootstrap must be >= 1 resamples, got {n_resamples}")
    ranks = np.asarray(first_hit_rank)[np.asarray(has_truth)]
    n = len(ranks)
    if n == 0:
        return {f"R@{k}_ci": [0.0, 0.0] for k in ks}
    hits = np.stack([ranks < k for k in ks]).astype(np.float64)  # (len(ks), n)
    cis = _percentile_cis(hits, n_resamples, seed, level, max_cells)
    return {f"R@{k}_ci": ci for k, ci in zip(ks, cis)}


def _percentile_cis(values: np.ndarray, n_resamples: int, seed: int, level: float, max_cells: int) -> list[list[float]]:
    """Percentile bootstrap interval (percent) of the mean of each row of ``values`` (rows, n): the same
    resampled queries for every row, drawn in chunks of at most ``max_cells`` indices."""
    n = values.shape[1]
    rng = np.random.default_rng(seed)
    stats = np.empty((len(values), n_resamples))
    chunk = max(1, max_cells // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        draws = rng.integers(0, n, size=(stop - start, n))
        for i in range(len(values)):
            stats[i, start:stop] = values[i][draws].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    out = []
    for i in range(len(values)):
        lo, hi = np.percentile(stats[i] * 100.0, [tail, 100.0 - tail])
        out.append([round(float(lo), 4), round(float(hi), 4)])
    return out


def bootstrap_gain(
    first_hit_rank: np.ndarray,
    base_first_hit_rank: np.ndarray,
    has_truth: np.ndarray,
    n_resamples: int,
    seed: int = 0,
    ks=DEFAULT_KS,
    level: float = 0.95,
    max_cells: int = 4_000_000,
) -> dict:
    """Gain over the baseline in Recall@K (percentage points) with a paired percentile bootstrap interval.

    ``{"R@K_gain": g, "R@K_gain_ci": [lo, hi]}``: both methods are scored on the same resampled
    queries, so the interval is that of the difference (narrower than the two recall intervals
    suggest when the methods agree on most queries).  Deterministic in ``seed``.
    """
    if n_resamples < 1:
        raise ParameterError(f"--bootstrap must be >= 1 resamples, got {n_resamples}")
    has = np.asarray(has_truth)
    ranks, base = np.asarray(first_hit_rank)[has], np.asarray(base_first_hit_rank)[has]
    n = len(ranks)
    if n == 0:
        return {**{f"R@{k}_gain": 0.0 for k in ks}, **{f"R@{k}_gain_ci": [0.0, 0.0] for k in ks}}
    diff = np.stack([(ranks < k).astype(np.float64) - (base < k) for k in ks])  # (len(ks), n)
    cis = _percentile_cis(diff, n_resamples, seed, level, max_cells)
    out: dict = {}
    for i, k in enumerate(ks):
        out[f"R@{k}_gain"] = round(float(diff[i].mean() * 100.0), 4)
        out[f"R@{k}_gain_ci"] = cis[i]
    return out


def compare_methods(
    queries: np.ndarray,
    gallery: np.ndarray,
    truth: Truth,
    methods,
    *,
    reference: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    nnn_alpha: float | None = None,
    nnn_k: int | None = None,
    params: BaselineParams | None = None,
    gallery_bank: np.ndarray | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> dict[str, MethodRun]:
    """Rank with every method in ``methods`` and score each ranking.

    NNN uses ``bias`` when given, otherwise computes it from ``reference``
    with ``nnn_alpha``/``nnn_k`` (that time counts toward NNN's seconds).
    The comparison methods need ``reference`` (their query bank); ``gallery_bank``
    defaults to the gallery itself, and then each DBNorm result carries
    ``"gallery_bank": "gallery"`` and ``"warnings": [GALLERY_BANK_WARNING]``
    (the published protocol uses separate training items).  The baseline is
    always run first (QB-Norm's DIS and DualDIS need its rank-1 items); it is
    returned only when asked for.  Hubness holds the ``N_1`` and ``N_10``
    figures of each (Q, 10) ranking (:func:`nnn_cli.core.metrics.hubness`).
    """
    params = (params or BaselineParams()).check()
    methods = list(dict.fromkeys(METHOD_ALIASES.get(m, m) for m in methods))
    if any(m in BANK_METHODS for m in methods) and reference is None:
        raise ParameterError("methods dn, qbnorm, is, dbnorm and dbnorm_dis need the reference queries (--reference)")
    if "nnn" in methods and bias is None and (reference is None or nnn_alpha is None or nnn_k is None):
        raise ParameterError("NNN needs --bias, or --reference with --alpha and --k (or --params)")
    n_gallery = len(gallery)
    runs: dict[str, MethodRun] = {}
    total = len(methods) + (0 if "baseline" in methods else 1)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    start = time.perf_counter()
    _, base_idx = DebiasedIndex(gallery).search(queries, TOP_K, block_rows)
    base = MethodRun(evaluate_ranking(base_idx, truth, n_gallery, time.perf_counter() - start), base_idx)
    base.result.hubness = hubness(base_idx, n_gallery)
    step()
    for method in methods:
        if method == "baseline":
            runs[method] = base
            continue
        start = time.perf_counter()
        extra: dict = {}
        if method == "nnn":
            if bias is not None:
                b = bias
            else:
                assert reference is not None and nnn_alpha is not None and nnn_k is not None  # checked above
                b = compute_bias(gallery, reference, nnn_alpha, nnn_k, block_rows)
            _, idx = DebiasedIndex(gallery, b).search(queries, TOP_K, block_rows)
            if bias is None:
                extra["params"] = {"alpha": nnn_alpha, "k": nnn_k}
        else:
            # reference is checked above for every bank method; any other name raises in rank_method
            idx = rank_method(
                method,
                queries,
                gallery,
                cast(np.ndarray, reference),
                params,
                gallery_bank,
                TOP_K,
                block_rows,
                top1=base_idx[:, 0],
            )
            extra["params"] = params.for_method(method)
            if method in GALLERY_BANK_WARNED and gallery_bank is None:
                extra["gallery_bank"] = "gallery"
                extra["warnings"] = [GALLERY_BANK_WARNING]
        res = evaluate_ranking(idx, truth, n_gallery, time.perf_counter() - start)
        res.hubness = hubness(idx, n_gallery)
        res.extra.update(extra)
        runs[method] = MethodRun(res, idx)
        step()
    if bootstrap:
        has = truth.has_truth()
        base_rank = truth.first_hit_rank(base.topk)
        for method, run in runs.items():
            rank = truth.first_hit_rank(run.topk)
            run.result.extra.update(bootstrap_recall(rank, has, bootstrap, seed))
            if method != "baseline":  # paired: the gain's own interval, what a reader wants to see
                run.result.extra.update(bootstrap_gain(rank, base_rank, has, bootstrap, seed))
    return runs
