"""The paper's comparison methods (Appendix A): DN, QBNorm, DBNorm's DualIS and DualDIS.

All of them rank gallery items ``r_i`` for a query ``q`` by a normalised score.
Written in log space, each is ``s(q, r_i)`` times a constant minus a per-gallery
term, so for ranking one query they are a *per-item bias* exactly like NNN's,
and the fast debiased index (``r' = [r, b]``) ranks them exactly:

* **DN** (Zhou et al., 2023): score ``(q - lam * mean(Qhat)) . (r - lam * mean(Rhat))``;
  ``Qhat`` the reference queries, ``Rhat`` a gallery-side reference bank
  (the gallery itself when none is given).  ``lam = 0.5`` by default, the
  value of Zhou et al. and of ``nnn-retrieval``'s DN ranker.
* **QBNorm** (Bogolin et al., 2022), querybank inverted softmax:
  ``exp(beta s(q, r)) / sum_{qhat} exp(beta s(qhat, r))``; ranking by it equals
  ranking by ``s(q, r) - LSE_qhat(beta s(qhat, r)) / beta``.  Default beta 20
  (the QB-Norm authors' default).  It is DualIS with ``beta1 = 0``.
* **DualIS** (Wang et al., 2023; paper Eq. 3-5): the product of an inverted
  softmax over a gallery bank ``Rhat`` (``beta1``, scores ``s(rhat, r_i)``) and
  one over the query bank ``Qhat`` (``beta2``).  In logs:
  ``(b1 + b2) s(q, r_i) - LSE_b1(r_i) - LSE_b2(r_i)``.
* **DualDIS**: DualIS with each factor applied only when the query's nearest
  gallery item (original scores) is in that factor's *activation set*, the
  gallery items that are the top-1 of at least one bank row (query bank for
  the ``Qhat`` factor, gallery bank for the ``Rhat`` factor), as in QB-Norm's
  dynamic inverted softmax with k = 1.  A query with neither factor active keeps
  its original scores.

The per-gallery log-sum-exp terms cost one pass over gallery x bank (linear in
the bank size, as the paper notes), computed in blocks with a running
maximum, so memory stays bounded and exp never overflows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from nnn_cli.errors import InputError, MismatchError, ParameterError
from nnn_cli.core.search import DebiasedIndex
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, ProgressFn, topk_inner_product

METHODS = ("baseline", "nnn", "dn", "qbnorm", "dbnorm", "dbnorm_dis")
"""Method names accepted by ``nnn eval --methods`` (and the JSON keys they produce)."""

BANK_METHODS = ("dn", "qbnorm", "dbnorm", "dbnorm_dis")
"""Methods that need the reference queries (the query bank)."""

DEFAULT_GRIDS = {
    "dn": {"dn_lambda": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]},
    "qbnorm": {"qb_beta": [1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0]},
    # Points spanning the paper's dense DBNorm sweep (Appendix B2) plus beta1 = 0 (QBNorm).
    "dbnorm": {"db_beta1": [0.0, 0.01, 0.1, 1.0, 3.0, 7.0, 15.0],
               "db_beta2": [10.0, 25.0, 50.0, 100.0, 200.0]},
}
DEFAULT_GRIDS["dbnorm_dis"] = DEFAULT_GRIDS["dbnorm"]


@dataclass
class BaselineParams:
    """Hyperparameters of the comparison methods (defaults documented in the module docstring)."""

    dn_lambda: float = 0.5
    qb_beta: float = 20.0
    db_beta1: float = 1.0
    db_beta2: float = 50.0

    def check(self) -> "BaselineParams":
        for name, value in asdict(self).items():
            if not math.isfinite(value) or value < 0:
                raise ParameterError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.qb_beta == 0:
            raise ParameterError("--qb-beta must be > 0 (beta 0 gives every gallery item the same score)")
        if self.db_beta1 + self.db_beta2 == 0:
            raise ParameterError("--db-beta1 and --db-beta2 cannot both be 0 (every gallery item would score the same)")
        return self

    def for_method(self, method: str) -> dict:
        """The hyperparameters ``method`` uses, by name."""
        keys = {"dn": ("dn_lambda",), "qbnorm": ("qb_beta",),
                "dbnorm": ("db_beta1", "db_beta2"), "dbnorm_dis": ("db_beta1", "db_beta2")}.get(method, ())
        return {key: getattr(self, key) for key in keys}


def read_method_params(paths, params: BaselineParams) -> BaselineParams:
    """``params`` with the best values of ``nnn tune --method`` JSON files (``{"method", "best": {...}}``) put in."""
    import json
    from dataclasses import fields, replace
    from pathlib import Path

    known = {f.name for f in fields(BaselineParams)}
    for path in paths or ():
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such file (method params from `nnn tune --method`)") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable JSON file ({exc})") from None
        best = doc.get("best") if isinstance(doc, dict) else None
        if not isinstance(best, dict) or not best or not set(best) <= known:
            raise InputError(f"{path}: expected {{\"method\": ..., \"best\": {{...}}}} as written by `nnn tune --method`"
                             f" with keys among {', '.join(sorted(known))}")
        try:
            params = replace(params, **{key: float(value) for key, value in best.items()})
        except (TypeError, ValueError):
            raise InputError(f"{path}: the values under 'best' must be numbers") from None
    return params.check()


def parse_methods(text: str) -> tuple[str, ...]:
    """``"baseline,nnn,dn"`` -> ordered unique method names; unknown names raise ParameterError."""
    names = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if not names:
        raise ParameterError(f"--methods is empty; choose from {', '.join(METHODS)}")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ParameterError(f"unknown method {unknown[0]!r} in --methods; choose from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))


def _check_dims(*arrays: tuple[str, np.ndarray]) -> None:
    dims = {a.shape[1] for _, a in arrays}
    if len(dims) > 1:
        raise MismatchError("dimension mismatch: " + ", ".join(f"{n} d={a.shape[1]}" for n, a in arrays))


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------
def log_sum_exp_scores(gallery: np.ndarray, bank: np.ndarray, betas, block_rows: int = 1024,
                       bank_block: int = 8192, progress: ProgressFn | None = None) -> np.ndarray:
    """(len(betas), N) float64: ``log sum_j exp(beta * s(bank_j, gallery_i))`` for each beta.

    One blocked GEMM pass over gallery x bank serves every beta; a running
    maximum keeps exp in range for any beta >= 0.
    """
    _check_dims(("gallery", gallery), ("bank", bank))
    betas = np.asarray(list(betas), dtype=np.float64)
    n, m = len(gallery), len(bank)
    out = np.empty((len(betas), n), dtype=np.float64)
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        g = np.ascontiguousarray(gallery[start:stop], dtype=np.float32)
        run_max = np.full((len(betas), stop - start), -np.inf)
        run_sum = np.zeros((len(betas), stop - start))
        for b0 in range(0, m, bank_block):
            s = g @ bank[b0:b0 + bank_block].T  # (rows, chunk) float32
            s_max = s.max(axis=1).astype(np.float64)
            for j, beta in enumerate(betas):
                new_max = np.maximum(run_max[j], beta * s_max)
                shifted = (np.float32(beta) * s - new_max[:, None].astype(np.float32))
                run_sum[j] = run_sum[j] * np.exp(run_max[j] - new_max) + np.exp(shifted).sum(axis=1, dtype=np.float64)
                run_max[j] = new_max
        out[:, start:stop] = run_max + np.log(run_sum)
        if progress:
            progress(stop, n)
    return out


def activation_set(gallery: np.ndarray, bank: np.ndarray, block_rows: int = DEFAULT_QUERY_BLOCK) -> np.ndarray:
    """(N,) bool: gallery items that are the top-1 (ties: lower index) of at least one bank row."""
    _check_dims(("gallery", gallery), ("bank", bank))
    _, top1 = topk_inner_product(bank, gallery, 1, block_rows)
    return np.bincount(top1[:, 0], minlength=len(gallery)) > 0


def inverted_softmax_bias(lse_gallery_bank: np.ndarray | None, lse_query_bank: np.ndarray | None,
                          beta1: float, beta2: float) -> np.ndarray:
    """(N,) float32 bias whose debiased ranking equals DualIS's (QBNorm when ``beta1 == 0``).

    ``log s_hat = (b1 + b2) s - L1 - L2`` ranks like ``s - (L1 + L2) / (b1 + b2)``.
    A factor with beta 0 is the constant ``1/|bank|`` and is left out.
    """
    total = 0.0
    acc = None
    for lse, beta in ((lse_gallery_bank, beta1), (lse_query_bank, beta2)):
        if beta > 0 and lse is not None:
            acc = lse if acc is None else acc + lse
            total += beta
    if acc is None:
        raise ParameterError("inverted softmax needs a positive beta")
    return (acc / total).astype(np.float32)


# ---------------------------------------------------------------------------
# Rankers: each returns (Q, top_k) gallery indices, best first, ties by lower index
# ---------------------------------------------------------------------------
def rank_dn(queries: np.ndarray, gallery: np.ndarray, reference: np.ndarray, dn_lambda: float,
            gallery_bank: np.ndarray | None = None, top_k: int = 10,
            block_rows: int = DEFAULT_QUERY_BLOCK, progress: ProgressFn | None = None) -> np.ndarray:
    """Distribution Normalization: zero-centre both sides by ``lam`` x the reference means, then rank."""
    bank = gallery if gallery_bank is None else gallery_bank
    _check_dims(("queries", queries), ("gallery", gallery), ("reference", reference), ("gallery bank", bank))
    q_mean = reference.mean(axis=0, dtype=np.float64).astype(np.float32)
    g_mean = bank.mean(axis=0, dtype=np.float64).astype(np.float32)
    lam = np.float32(dn_lambda)
    shifted_gallery = gallery - lam * g_mean
    shifted_queries = queries - lam * q_mean
    _, idx = DebiasedIndex(shifted_gallery).search(shifted_queries, top_k, block_rows, progress)
    return idx


def dualis_bias(gallery: np.ndarray, reference: np.ndarray, beta1: float, beta2: float,
                gallery_bank: np.ndarray | None = None, block_rows: int = 1024,
                progress: ProgressFn | None = None) -> np.ndarray:
    """(N,) float32 DualIS bias (QBNorm when ``beta1 == 0``)."""
    bank = gallery if gallery_bank is None else gallery_bank
    l1 = log_sum_exp_scores(gallery, bank, [beta1], block_rows)[0] if beta1 > 0 else None
    l2 = log_sum_exp_scores(gallery, reference, [beta2], block_rows, progress=progress)[0] if beta2 > 0 else None
    return inverted_softmax_bias(l1, l2, beta1, beta2)


def rank_qbnorm(queries: np.ndarray, gallery: np.ndarray, reference: np.ndarray, beta: float,
                top_k: int = 10, block_rows: int = DEFAULT_QUERY_BLOCK,
                progress: ProgressFn | None = None) -> np.ndarray:
    """QBNorm (querybank inverted softmax) ranking."""
    if not beta > 0:
        raise ParameterError(f"QBNorm beta must be > 0, got {beta}")
    bias = dualis_bias(gallery, reference, 0.0, beta)
    _, idx = DebiasedIndex(gallery, bias).search(queries, top_k, block_rows, progress)
    return idx


def rank_dualis(queries: np.ndarray, gallery: np.ndarray, reference: np.ndarray, beta1: float, beta2: float,
                gallery_bank: np.ndarray | None = None, top_k: int = 10,
                block_rows: int = DEFAULT_QUERY_BLOCK, progress: ProgressFn | None = None) -> np.ndarray:
    """DBNorm DualIS ranking (paper Eq. 3-5)."""
    bias = dualis_bias(gallery, reference, beta1, beta2, gallery_bank)
    _, idx = DebiasedIndex(gallery, bias).search(queries, top_k, block_rows, progress)
    return idx


@dataclass
class DualDISState:
    """What DualDIS precomputes: both log-sum-exp terms and both activation sets."""

    lse_gallery_bank: np.ndarray | None
    lse_query_bank: np.ndarray | None
    active_gallery_bank: np.ndarray  # (N,) bool
    active_query_bank: np.ndarray  # (N,) bool


def dualdis_state(gallery: np.ndarray, reference: np.ndarray, beta1: float, beta2: float,
                  gallery_bank: np.ndarray | None = None, block_rows: int = 1024) -> DualDISState:
    bank = gallery if gallery_bank is None else gallery_bank
    return DualDISState(
        log_sum_exp_scores(gallery, bank, [beta1], block_rows)[0] if beta1 > 0 else None,
        log_sum_exp_scores(gallery, reference, [beta2], block_rows)[0] if beta2 > 0 else None,
        activation_set(gallery, bank),
        activation_set(gallery, reference),
    )


def rank_dualdis(queries: np.ndarray, gallery: np.ndarray, reference: np.ndarray, beta1: float, beta2: float,
                 gallery_bank: np.ndarray | None = None, top_k: int = 10,
                 block_rows: int = DEFAULT_QUERY_BLOCK, top1: np.ndarray | None = None,
                 state: DualDISState | None = None, progress: ProgressFn | None = None) -> np.ndarray:
    """DBNorm DualDIS ranking: each factor of DualIS only for queries whose top-1 is in its activation set.

    ``top1`` (the plain rank-1 item of each query) is computed when not given.
    Queries are split into the four groups (both / gallery-bank only /
    query-bank only / neither factor active) and each group is searched with
    its own bias; the neither group keeps the original scores.
    """
    if state is None:
        state = dualdis_state(gallery, reference, beta1, beta2, gallery_bank)
    if top1 is None:
        _, first = DebiasedIndex(gallery).search(queries, 1, block_rows)
        top1 = first[:, 0]
    use_r = state.active_gallery_bank[top1] & (beta1 > 0)
    use_q = state.active_query_bank[top1] & (beta2 > 0)
    k = min(top_k, len(gallery))
    out = np.empty((len(queries), k), dtype=np.int64)
    for with_r in (True, False):
        for with_q in (True, False):
            rows = np.flatnonzero((use_r == with_r) & (use_q == with_q))
            if len(rows) == 0:
                continue
            if with_r or with_q:
                bias = inverted_softmax_bias(state.lse_gallery_bank if with_r else None,
                                             state.lse_query_bank if with_q else None,
                                             beta1 if with_r else 0.0, beta2 if with_q else 0.0)
            else:
                bias = None
            _, idx = DebiasedIndex(gallery, bias).search(queries[rows], k, block_rows)
            out[rows] = idx
    if progress:
        progress(len(queries), len(queries))
    return out


def rank_method(method: str, queries: np.ndarray, gallery: np.ndarray, reference: np.ndarray,
                params: BaselineParams, gallery_bank: np.ndarray | None = None, top_k: int = 10,
                block_rows: int = DEFAULT_QUERY_BLOCK, top1: np.ndarray | None = None,
                progress: ProgressFn | None = None) -> np.ndarray:
    """(Q, top_k) ranking of one comparison method (``dn``, ``qbnorm``, ``dbnorm``, ``dbnorm_dis``)."""
    if method == "dn":
        return rank_dn(queries, gallery, reference, params.dn_lambda, gallery_bank, top_k, block_rows, progress)
    if method == "qbnorm":
        return rank_qbnorm(queries, gallery, reference, params.qb_beta, top_k, block_rows, progress)
    if method == "dbnorm":
        return rank_dualis(queries, gallery, reference, params.db_beta1, params.db_beta2, gallery_bank,
                           top_k, block_rows, progress)
    if method == "dbnorm_dis":
        return rank_dualdis(queries, gallery, reference, params.db_beta1, params.db_beta2, gallery_bank,
                            top_k, block_rows, top1=top1, progress=progress)
    raise ParameterError(f"unknown comparison method {method!r}; choose from {', '.join(BANK_METHODS)}")


# ---------------------------------------------------------------------------
# Hyperparameter sweep (used by `nnn tune --method`)
# ---------------------------------------------------------------------------
def tune_baseline(method: str, queries: np.ndarray, gallery: np.ndarray, truth, reference: np.ndarray,
                  grid: dict | None = None, gallery_bank: np.ndarray | None = None,
                  block_rows: int = DEFAULT_QUERY_BLOCK, progress: ProgressFn | None = None) -> dict:
    """Sweep ``method``'s hyperparameters, optimising Recall@1 (ties: the earlier grid point).

    ``grid`` maps parameter names (``dn_lambda``, ``qb_beta``, ``db_beta1``,
    ``db_beta2``) to value lists; missing names use :data:`DEFAULT_GRIDS`.
    Returns ``{"method", "best": {param: value}, "R@1", "R@5", "R@10", "grid": [...]}``
    where ``grid`` lists every point with its recalls.  The log-sum-exp terms
    for all betas are computed in one pass per bank.
    """
    from nnn_cli.core.metrics import recall_from_topk

    if method not in DEFAULT_GRIDS:
        raise ParameterError(f"cannot tune {method!r}; choose from {', '.join(DEFAULT_GRIDS)}")
    grid = {**DEFAULT_GRIDS[method], **(grid or {})}
    for name, values in grid.items():
        if not values:
            raise ParameterError(f"empty grid for {name}")
        if any((not math.isfinite(float(v))) or float(v) < 0 for v in values):
            raise ParameterError(f"grid values for {name} must be finite numbers >= 0")
    points: list[dict] = []
    if method == "dn":
        for lam in grid["dn_lambda"]:
            idx = rank_dn(queries, gallery, reference, float(lam), gallery_bank, 10, block_rows)
            points.append({"dn_lambda": float(lam), **recall_from_topk(idx, truth)})
            if progress:
                progress(len(points), len(grid["dn_lambda"]))
    elif method == "qbnorm":
        betas = [float(b) for b in grid["qb_beta"] if float(b) > 0]
        if not betas:
            raise ParameterError("qb_beta grid needs a value > 0")
        lse = log_sum_exp_scores(gallery, reference, betas)
        for j, beta in enumerate(betas):
            _, idx = DebiasedIndex(gallery, inverted_softmax_bias(None, lse[j], 0.0, beta)).search(queries, 10, block_rows)
            points.append({"qb_beta": beta, **recall_from_topk(idx, truth)})
            if progress:
                progress(j + 1, len(betas))
    else:
        b1s = [float(b) for b in grid["db_beta1"]]
        b2s = [float(b) for b in grid["db_beta2"]]
        bank = gallery if gallery_bank is None else gallery_bank
        lse1 = log_sum_exp_scores(gallery, bank, b1s)
        lse2 = log_sum_exp_scores(gallery, reference, b2s)
        if method == "dbnorm_dis":
            act_r, act_q = activation_set(gallery, bank), activation_set(gallery, reference)
            _, first = DebiasedIndex(gallery).search(queries, 1, block_rows)
        pairs = [(i, j) for i in range(len(b1s)) for j in range(len(b2s)) if b1s[i] + b2s[j] > 0]
        for n_done, (i, j) in enumerate(pairs, 1):
            if method == "dbnorm":
                bias = inverted_softmax_bias(lse1[i], lse2[j], b1s[i], b2s[j])
                _, idx = DebiasedIndex(gallery, bias).search(queries, 10, block_rows)
            else:
                state = DualDISState(lse1[i], lse2[j], act_r, act_q)
                idx = rank_dualdis(queries, gallery, reference, b1s[i], b2s[j], top_k=10,
                                   block_rows=block_rows, top1=first[:, 0], state=state)
            points.append({"db_beta1": b1s[i], "db_beta2": b2s[j], **recall_from_topk(idx, truth)})
            if progress:
                progress(n_done, len(pairs))
    best = max(range(len(points)), key=lambda p: (points[p]["R@1"], -p))
    best_point = points[best]
    params = {k: v for k, v in best_point.items() if not k.startswith("R@")}
    return {"method": method, "best": params, **{k: v for k, v in best_point.items() if k.startswith("R@")},
            "grid": points}


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
            raise ParameterError(f"bad --method-grid entry {part.strip()!r}: use NAME=V1,V2 with NAME one of "
                                 f"{', '.join(sorted(known))}")
        try:
            out[name] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ParameterError(f"bad --method-grid values for {name}: {values!r}") from None
    return out
