"""Sweeping a comparison method's settings (`nnn tune --method`): DN's lambda, QB-Norm's and the
inverted softmax's beta, DBNorm's (beta1, beta2) as the NNN paper's App. B2 (a coarse log grid with
zeros, then a dense grid around the best), each point's recall exact and cheap (one score pass per
block of cells).  The rankings themselves are :mod:`nnn_cli.core.baselines`.
"""

from __future__ import annotations

import math

import numpy as np

from nnn_cli.core.baselines import (
    DEFAULT_GRIDS,
    DENSE_MODES,
    DENSE_POINTS,
    GALLERY_BANK_WARNING,
    METHOD_ALIASES,
    PAPER_DENSE,
    DualDISState,
    _rows_per_block,
    activation_set,
    dualdis_groups,
    inverted_softmax_bias,
    log_sum_exp_scores,
    plain_top1,
    product_key,
    rank_dn,
)
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, ProgressFn
from nnn_cli.errors import ParameterError

# ---------------------------------------------------------------------------
# Hyperparameter sweep (used by `nnn tune --method`)
# ---------------------------------------------------------------------------
CELL_CHUNK = 32
"""Grid cells ranked together by :func:`nnn_cli.core.tune.truth_ranks` (keeps its bias envelope narrow)."""


def _sig(value: float) -> float:
    return float(f"{float(value):.6g}")


def _subset_truth(truth, rows: np.ndarray):
    """The truth pairs of query rows ``rows`` (sorted), renumbered 0..len(rows)-1."""
    from nnn_cli.core.truth import Truth

    pos = np.full(truth.n_queries, -1, dtype=np.int64)
    pos[rows] = np.arange(len(rows))
    mapped = pos[truth.query]
    keep = mapped >= 0
    return Truth(mapped[keep], truth.gallery[keep], len(rows))


def _bias_ranks(queries, gallery, truth, biases: np.ndarray, rows: np.ndarray, block_rows: int) -> np.ndarray:
    """(C, len(rows)) uint8 capped first-hit ranks of queries ``rows`` under each bias row."""
    from nnn_cli.core.tune import truth_ranks

    sub = _subset_truth(truth, rows)
    q = np.ascontiguousarray(queries[rows], dtype=np.float32)
    parts = [
        truth_ranks(q, gallery, sub, np.ascontiguousarray(biases[c0 : c0 + CELL_CHUNK], dtype=np.float32), block_rows)
        for c0 in range(0, len(biases), CELL_CHUNK)
    ]
    return np.concatenate(parts, axis=0)


def _product_ranks(
    queries, gallery, truth, beta: float, lse: np.ndarray, rows: np.ndarray, block_rows: int
) -> np.ndarray:
    """(len(rows),) uint8 capped first-hit ranks under :func:`product_key` (ties: lower index)."""
    from nnn_cli.core.tune import RANK_CAP

    sub = _subset_truth(truth, rows)
    n = len(rows)
    first = np.full(n, RANK_CAP, dtype=np.uint8)
    g_t = np.ascontiguousarray(np.asarray(gallery, dtype=np.float32).T)
    cols = np.arange(len(gallery))
    order = np.argsort(sub.query, kind="stable")
    pq_all, pi_all = sub.query[order], sub.gallery[order]
    step = _rows_per_block(block_rows, len(gallery))
    for start in range(0, n, step):
        stop = min(n, start + step)
        p0, p1 = np.searchsorted(pq_all, [start, stop])
        if p1 == p0:
            continue
        s = np.ascontiguousarray(queries[rows[start:stop]], dtype=np.float32) @ g_t
        key = product_key(s, beta, lse)
        pq, pi = pq_all[p0:p1] - start, pi_all[p0:p1]
        kr = key[pq]
        own = kr[np.arange(len(pq)), pi][:, None]
        count = np.count_nonzero(kr > own, axis=1) + np.count_nonzero(
            (kr == own) & (cols[None, :] < pi[:, None]), axis=1
        )
        np.minimum.at(first, pq + start, np.minimum(count, RANK_CAP).astype(np.uint8))
    return first


def _raw_ranks(queries, gallery, truth, rows, block_rows):
    return _bias_ranks(queries, gallery, truth, np.zeros((1, len(gallery)), dtype=np.float32), rows, block_rows)[0]


def _dense_axis(coarse: list[float], best: float) -> list[float]:
    """0 plus 20 log-spaced values between the coarse neighbours of ``best``."""
    nz = sorted(v for v in coarse if v > 0)
    if len(nz) < 2:
        return sorted({0.0, *nz})
    if best <= 0:
        lo, hi = nz[0], nz[1]
    else:
        i = int(np.argmin(np.abs(np.log(nz) - math.log(best))))
        lo, hi = nz[max(i - 1, 0)], nz[min(i + 1, len(nz) - 1)]
    return [0.0] + [_sig(v) for v in np.geomspace(lo, hi, DENSE_POINTS)]


def _db_points(
    method, queries, gallery, truth, reference, bank, b1s, b2s, top1, activation_k, block_rows, stage
) -> list[dict]:
    from nnn_cli.core.tune import recall_from_ranks

    lse1 = log_sum_exp_scores(gallery, bank, b1s)
    lse2 = log_sum_exp_scores(gallery, reference, b2s)
    pairs = [(i, j) for i in range(len(b1s)) for j in range(len(b2s)) if b1s[i] + b2s[j] > 0]
    if not pairs:
        raise ParameterError("db_beta1/db_beta2 grids need a pair with beta1 + beta2 > 0")
    biases = np.stack([inverted_softmax_bias(lse1[i], lse2[j], b1s[i], b2s[j]) for i, j in pairs])
    all_rows = np.arange(len(queries))
    if method == "dbnorm":
        ranks = _bias_ranks(queries, gallery, truth, biases, all_rows, block_rows)
    else:
        state = DualDISState(
            lse1[0],
            lse2[0],
            activation_set(gallery, bank, activation_k),
            activation_set(gallery, reference, activation_k),
        )
        groups = dualdis_groups(top1, state)
        ranks = np.empty((len(pairs), len(queries)), dtype=np.uint8)
        if len(groups["both"]):
            ranks[:, groups["both"]] = _bias_ranks(queries, gallery, truth, biases, groups["both"], block_rows)
        if len(groups["neither"]):
            ranks[:, groups["neither"]] = _raw_ranks(queries, gallery, truth, groups["neither"], block_rows)[None, :]
        pair_i = np.array([i for i, _ in pairs])
        pair_j = np.array([j for _, j in pairs])
        for name, betas, lse, which in (("gallery_only", b1s, lse1, pair_i), ("query_only", b2s, lse2, pair_j)):
            rows = groups[name]
            if not len(rows):
                continue
            for v in np.unique(which):
                cells = np.flatnonzero(which == v)
                ranks[np.ix_(cells, rows)] = _product_ranks(
                    queries, gallery, truth, betas[v], lse[v], rows, block_rows
                )[None, :]
    rec = recall_from_ranks(ranks, truth.has_truth())
    return [
        {
            "db_beta1": b1s[i],
            "db_beta2": b2s[j],
            "stage": stage,
            **{key: float(rec[key][c]) for key in ("R@1", "R@5", "R@10")},
        }
        for c, (i, j) in enumerate(pairs)
    ]


def tune_baseline(
    method: str,
    queries: np.ndarray,
    gallery: np.ndarray,
    truth,
    reference: np.ndarray,
    grid: dict | None = None,
    gallery_bank: np.ndarray | None = None,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
    dense: str = "around",
    activation_k: int = 1,
) -> dict:
    """Sweep ``method``'s hyperparameters, optimising Recall@1 (ties: the earlier grid point).

    ``grid`` maps parameter names (``dn_lambda``, ``qb_beta``, ``db_beta1``,
    ``db_beta2``) to value lists; missing names use :data:`DEFAULT_GRIDS`.
    DBNorm (``dbnorm``/``dbnorm_dis``) without a ``grid`` follows the NNN
    paper's App. B2: a coarse stage (0 plus 20 log-spaced values over
    [0.001, 400] for each beta, 440 pairs) then, with ``dense="around"``
    (default), a dense 21 x 21 stage (0 plus 20 log-spaced values between the
    coarse neighbours of the best coarse value, per beta); ``dense="paper"``
    uses the paper's fixed dense ranges (:data:`PAPER_DENSE`), ``"none"`` stops
    after the coarse stage.  Every point's recall is exact (same ranking rule
    as the rankers), computed from one score pass per block of cells.

    Returns ``{"method", "best": {param: value}, "R@1", "R@5", "R@10", "grid": [...],
    "stages": {...}}`` (``grid``: every point with its recalls, and its
    ``stage`` for DBNorm), plus ``"warnings"`` and ``"gallery_bank_is_gallery"``
    when DBNorm ran without a gallery bank.
    """
    from nnn_cli.core.metrics import recall_from_topk
    from nnn_cli.core.tune import recall_from_ranks

    method = METHOD_ALIASES.get(method, method)
    if method not in DEFAULT_GRIDS:
        raise ParameterError(f"cannot tune {method!r}; choose from {', '.join(DEFAULT_GRIDS)}")
    if dense not in DENSE_MODES:
        raise ParameterError(f"dense must be one of {', '.join(DENSE_MODES)}, got {dense!r}")
    user_grid = bool(grid)
    grid = {**DEFAULT_GRIDS[method], **(grid or {})}
    for name, values in grid.items():
        if not values:
            raise ParameterError(f"empty grid for {name}")
        if any((not math.isfinite(float(v))) or float(v) < 0 for v in values):
            raise ParameterError(f"grid values for {name} must be finite numbers >= 0")
    points: list[dict] = []
    extra: dict = {}
    if method == "dn":
        for lam in grid["dn_lambda"]:
            idx = rank_dn(queries, gallery, reference, float(lam), gallery_bank, 10, block_rows)
            points.append({"dn_lambda": float(lam), **recall_from_topk(idx, truth)})
            if progress:
                progress(len(points), len(grid["dn_lambda"]))
    elif method in ("qbnorm", "is"):
        betas = [float(b) for b in grid["qb_beta"] if float(b) > 0]
        if not betas:
            raise ParameterError("qb_beta grid needs a value > 0")
        lse = log_sum_exp_scores(gallery, reference, betas)
        biases = np.stack([inverted_softmax_bias(None, lse[j], 0.0, beta) for j, beta in enumerate(betas)])
        all_rows = np.arange(len(queries))
        if method == "is":
            ranks = _bias_ranks(queries, gallery, truth, biases, all_rows, block_rows)
        else:
            active = activation_set(gallery, reference, activation_k)[plain_top1(queries, gallery, block_rows)]
            ranks = np.empty((len(betas), len(queries)), dtype=np.uint8)
            on, off = np.flatnonzero(active), np.flatnonzero(~active)
            if len(on):
                ranks[:, on] = _bias_ranks(queries, gallery, truth, biases, on, block_rows)
            if len(off):
                ranks[:, off] = _raw_ranks(queries, gallery, truth, off, block_rows)[None, :]
            extra["activation_k"] = int(activation_k)
            extra["share_renormalised"] = float(active.mean()) if len(active) else 0.0
        rec = recall_from_ranks(ranks, truth.has_truth())
        points = [
            {"qb_beta": beta, **{key: float(rec[key][j]) for key in ("R@1", "R@5", "R@10")}}
            for j, beta in enumerate(betas)
        ]
        if progress:
            progress(1, 1)
    else:
        bank = gallery if gallery_bank is None else gallery_bank
        top1 = plain_top1(queries, gallery, block_rows) if method == "dbnorm_dis" else None
        b1s = [_sig(b) for b in grid["db_beta1"]]
        b2s = [_sig(b) for b in grid["db_beta2"]]
        points = _db_points(
            method, queries, gallery, truth, reference, bank, b1s, b2s, top1, activation_k, block_rows, "coarse"
        )
        stages = {"coarse": len(points)}
        if progress:
            progress(1, 1 if user_grid or dense == "none" else 2)
        if not user_grid and dense != "none":
            if dense == "paper":
                d1 = [0.0] + [_sig(v) for v in np.geomspace(*PAPER_DENSE["db_beta1"], DENSE_POINTS)]
                d2 = [0.0] + [_sig(v) for v in np.geomspace(*PAPER_DENSE["db_beta2"], DENSE_POINTS)]
            else:
                top = max(range(len(points)), key=lambda p: (points[p]["R@1"], -p))
                d1 = _dense_axis(b1s, points[top]["db_beta1"])
                d2 = _dense_axis(b2s, points[top]["db_beta2"])
            dense_points = _db_points(
                method, queries, gallery, truth, reference, bank, d1, d2, top1, activation_k, block_rows, "dense"
            )
            points += dense_points
            stages["dense"] = len(dense_points)
            if progress:
                progress(2, 2)
        extra["stages"] = stages
        extra["dense"] = "none" if user_grid else dense
        if method == "dbnorm_dis":
            extra["activation_k"] = int(activation_k)
        if gallery_bank is None:
            extra["gallery_bank_is_gallery"] = True
            extra["warnings"] = [GALLERY_BANK_WARNING]
    best = max(range(len(points)), key=lambda p: (points[p]["R@1"], -p))
    best_point = points[best]
    params = {k: v for k, v in best_point.items() if not k.startswith("R@") and k != "stage"}
    return {
        "method": method,
        "best": params,
        **{k: v for k, v in best_point.items() if k.startswith("R@")},
        "grid": points,
        **extra,
    }


def parse_grid(text: str) -> dict[str, list[float]]:
    """``"db_beta1=0,1,5;db_beta2=25,50"`` -> ``{"db_beta1": [0, 1, 5], "db_beta2": [25, 50]}``."""
    known = {name for grid in DEFAULT_GRIDS.values() for name in grid}
    out: dict[str, list[float]] = {}
    for part in str(text).split(";"):
        if not part.strip():
            continue
        name, sep, values = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known:
            raise ParameterError(
                f"bad --method-grid entry {part.strip()!r}: use NAME=V1,V2 with NAME one of {', '.join(sorted(known))}"
            )
        try:
            out[name] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ParameterError(f"bad --method-grid values for {name}: {values!r}") from None
    return out
