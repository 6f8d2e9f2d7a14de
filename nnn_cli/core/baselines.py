"""The paper's comparison methods (Appendix A): DN, QB-Norm, DBNorm's DualIS and DualDIS.

Each method follows one published definition (and says where it departs from
the released code):

* **DN** (Zhou et al., 2023): score ``(q - lam * mean(Qhat)) . (r - lam * mean(Rhat))``;
  ``Qhat`` the reference queries, ``Rhat`` a gallery-side bank (the gallery
  itself when none is given, as in DN's released ``compute_retrieval.py``,
  which centres the test features by their own means).  ``lam = 0.25`` by
  default: the coefficient of Zhou et al.'s code and paper.  (``nnn-retrieval``'s
  ``DNRanker`` uses 0.5 and adds NNN on top; that is not DN.)
* **qbnorm** = QB-Norm's released method, **Dynamic Inverted Softmax**
  (Bogolin et al., 2022; ``ioanacroi/qb-norm``, ``dynamic_inverted_softmax.py``):
  the *activation set* is every gallery item in the top ``activation_k`` (default
  1) of at least one querybank row; a query whose plain top-1 item is in it is
  ranked by ``exp(beta s(q, r)) / sum_{qhat} exp(beta s(qhat, r))`` (beta 20 by
  default, the authors' default), every other query keeps its raw scores.
* **is** (alias ``qbnorm_is``): plain querybank inverted softmax for every
  query (QB-Norm's non-dynamic variant; DBNorm's ``IS``; the NNN paper's
  "DualIS with beta1 = 0", App. A2).
* **dbnorm** = DualIS (Wang et al., 2023; NNN paper App. A1, Eq. 3-5): the product
  of an inverted softmax over a gallery bank ``Rhat`` (``beta1``) and one over
  the query bank ``Qhat`` (``beta2``).  In logs: ``(b1 + b2) s - L1(r) - L2(r)``.
* **dbnorm_dis** = DualDIS (App. A1): each factor is used only when the query's
  nearest gallery item (plain scores) is in that factor's activation set (top
  ``activation_k`` items of the gallery-bank rows for the ``Rhat`` factor, of
  the query-bank rows for the ``Qhat`` factor); an inactive factor is replaced by
  the raw score ``s(q, r)`` as App. A1 and DBNorm's code do, so a query with one
  factor active ranks by ``s(q, r) * shat(q, r)`` (computed exactly through a
  signed log key).  Departures from DBNorm's released ``dbnorm.py``: (1) its
  ``db_norm`` passes the gallery-bank x gallery matrix where the test query x
  gallery matrix belongs (both ``func(...)`` calls get ``train_vis_test_vis``),
  so the released code never scores the test queries; we use the paper's
  equations; (2) its ``qb_norm``/``IS`` write into their input array
  (``test_test_normalized = test_test`` aliases it); we never modify inputs;
  (3) a query with *neither* factor active would score ``s * s`` there, which
  ranks negative scores by their magnitude; we keep ``s`` (QB-Norm's rule:
  an unnormalised query keeps its raw score).  They agree whenever the scores
  compared are positive.

**Naming of beta1/beta2.**  Ours follow the NNN paper (App. A1): ``db_beta1``
is the gallery-bank (``Rhat``) factor, ``db_beta2`` the query-bank (``Qhat``)
factor.  DBNorm's released code names them the other way round (its ``beta1``
is the query bank, ``beta2`` the gallery bank).

**Gallery bank.**  The NNN paper (App. A1) uses *training* items as ``Rhat``
(training images for image retrieval).  Without one we fall back to the test
gallery, which is not the published protocol: every gallery item is then its
own top-1 in the bank, so DualDIS's gallery factor is always active, and
DualIS's gallery factor changes.  :func:`gallery_bank_warning` gives the line
to print; :func:`compare_methods` puts it in the JSON.

Every method ranks one query by a per-item bias (or, for DualDIS queries with
one factor active, a monotone per-query key), computed with float32 GEMM
blocks and a running-maximum log-sum-exp over the banks, which is linear in
the bank size (the paper's App. A1).  An exact NNN bias is linear in the
reference size too (one pass over gallery x reference); NNN is sublinear only
with ``--index`` (approximate top-k).  At query time every method here is one
inner-product search over ``[r, b]``, the same cost as NNN's.

Why one module of about 460 lines: 60 are this docstring (what each method follows and where it
departs from released code); the five rankers share one log-sum-exp kernel and one ranking helper,
and splitting them would scatter that.  Their sweeps are :mod:`nnn_cli.core.baseline_sweep`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from nnn_cli.core.nnn import check_same_dims
from nnn_cli.core.search import DebiasedIndex
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, ProgressFn, top_k_exact, topk_inner_product
from nnn_cli.errors import ParameterError

METHODS = ("baseline", "nnn", "dn", "qbnorm", "is", "dbnorm", "dbnorm_dis")
"""Method names accepted by ``nnn eval --methods`` (and the JSON keys they produce)."""

METHOD_ALIASES = {"qbnorm_is": "is", "qbnorm_dis": "qbnorm", "dualis": "dbnorm", "dualdis": "dbnorm_dis"}
"""Other accepted spellings, mapped to the names above."""

BANK_METHODS = ("dn", "qbnorm", "is", "dbnorm", "dbnorm_dis")
"""Methods that need the reference queries (the query bank)."""

GALLERY_BANK_METHODS = ("dn", "dbnorm", "dbnorm_dis")
"""Methods that use a gallery-side bank (``--gallery-bank``)."""

GALLERY_BANK_WARNED = ("dbnorm", "dbnorm_dis")
"""Methods whose published protocol needs a separate gallery bank (warned when it defaults to the gallery)."""

DN_LAMBDA = 0.25
"""DN's coefficient in Zhou et al.'s code ("the coefficient ... used in our paper")."""

DB_COARSE = tuple(float(v) for v in np.geomspace(0.001, 400.0, 20))
"""The paper's coarse DBNorm axis (App. B2): 20 log-spaced values over [0.001, 400] (0 is added too)."""

PAPER_DENSE = {"db_beta1": (0.001, 15.0), "db_beta2": (25.0, 200.0)}
"""The dense ranges the NNN paper used on its data (App. B2), 20 log-spaced values each."""

DENSE_POINTS = 20
DENSE_MODES = ("around", "paper", "none")

DEFAULT_GRIDS = {
    "dn": {"dn_lambda": [round(0.05 * i, 2) for i in range(21)]},  # 0, 0.05, ..., 1: holds 0.25 and 0.5
    "qbnorm": {"qb_beta": [1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0]},
    # App. B2 coarse stage: 0 plus 20 log-spaced values over [0.001, 400] for each beta
    # (the dense stage is built around the best coarse point, see tune_baseline).
    "dbnorm": {"db_beta1": [0.0, *DB_COARSE], "db_beta2": [0.0, *DB_COARSE]},
}
DEFAULT_GRIDS["is"] = DEFAULT_GRIDS["qbnorm"]
DEFAULT_GRIDS["dbnorm_dis"] = DEFAULT_GRIDS["dbnorm"]

GALLERY_BANK_WARNING = (
    "no --gallery-bank: DBNorm's gallery-side bank is the test gallery itself, not separate training items as in "
    "the NNN paper (App. A1); every gallery item is then its own top-1, so DualDIS's gallery factor is always "
    "active. Give --gallery-bank TRAIN_ITEMS for the published protocol."
)


def gallery_bank_warning(methods, gallery_bank) -> str | None:
    """The warning line when a DBNorm method runs without a gallery bank, else None."""
    if gallery_bank is None and any(m in GALLERY_BANK_WARNED for m in methods):
        return GALLERY_BANK_WARNING
    return None


@dataclass
class BaselineParams:
    """Hyperparameters of the comparison methods (defaults documented in the module docstring).

    ``db_beta1`` weighs the gallery-bank factor and ``db_beta2`` the query-bank
    factor, as in the NNN paper (the reverse of DBNorm's code).
    ``activation_k``: QB-Norm's k, the activation set is the top-k items of each bank row.
    """

    dn_lambda: float = DN_LAMBDA
    qb_beta: float = 20.0
    db_beta1: float = 1.0
    db_beta2: float = 50.0
    activation_k: int = 1

    def check(self) -> BaselineParams:
        for name, value in asdict(self).items():
            if not math.isfinite(value) or value < 0:
                raise ParameterError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        if self.qb_beta == 0:
            raise ParameterError("--qb-beta must be > 0 (beta 0 gives every gallery item the same score)")
        if self.db_beta1 + self.db_beta2 == 0:
            raise ParameterError("--db-beta1 and --db-beta2 cannot both be 0 (every gallery item would score the same)")
        if self.activation_k < 1 or self.activation_k != int(self.activation_k):
            raise ParameterError(f"--activation-k must be an integer >= 1, got {self.activation_k}")
        self.activation_k = int(self.activation_k)
        return self

    def for_method(self, method: str) -> dict:
        """The hyperparameters ``method`` uses, by name."""
        keys = {
            "dn": ("dn_lambda",),
            "qbnorm": ("qb_beta", "activation_k"),
            "is": ("qb_beta",),
            "dbnorm": ("db_beta1", "db_beta2"),
            "dbnorm_dis": ("db_beta1", "db_beta2", "activation_k"),
        }.get(method, ())
        return {key: getattr(self, key) for key in keys}


def parse_methods(text: str) -> tuple[str, ...]:
    """``"baseline,nnn,dn"`` -> ordered unique method names (aliases resolved); unknown names raise ParameterError."""
    names = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if not names:
        raise ParameterError(f"--methods is empty; choose from {', '.join(METHODS)}")
    names = [METHOD_ALIASES.get(n, n) for n in names]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ParameterError(
            f"unknown method {unknown[0]!r} in --methods; choose from {', '.join(METHODS)}"
            f" (or {', '.join(METHOD_ALIASES)})"
        )
    return tuple(dict.fromkeys(names))


def _check_dims(*arrays: tuple[str, np.ndarray]) -> None:
    check_same_dims((n, a.shape[1]) for n, a in arrays)


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------
def log_sum_exp_scores(
    gallery: np.ndarray,
    bank: np.ndarray,
    betas,
    block_rows: int = 1024,
    bank_block: int = 8192,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(len(betas), N) float64: ``log sum_j exp(beta * s(bank_j, gallery_i))`` for each beta.

    One blocked GEMM pass over gallery x bank serves every beta; a running
    maximum keeps exp in range for any beta >= 0 (beta 0 gives ``log |bank|``).
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
            s = g @ bank[b0 : b0 + bank_block].T  # (rows, chunk) float32
            s_max = s.max(axis=1).astype(np.float64)
            for j, beta in enumerate(betas):
                new_max = np.maximum(run_max[j], beta * s_max)
                shifted = np.float32(beta) * s - new_max[:, None].astype(np.float32)
                run_sum[j] = run_sum[j] * np.exp(run_max[j] - new_max) + np.exp(shifted).sum(axis=1, dtype=np.float64)
                run_max[j] = new_max
        out[:, start:stop] = run_max + np.log(run_sum)
        if progress:
            progress(stop, n)
    return out


def activation_set(
    gallery: np.ndarray, bank: np.ndarray, k: int = 1, block_rows: int = DEFAULT_QUERY_BLOCK
) -> np.ndarray:
    """(N,) bool: gallery items in the top ``k`` (ties: lower index) of at least one bank row.

    QB-Norm's ``get_retrieved_videos(train_test, k)``.
    """
    _check_dims(("gallery", gallery), ("bank", bank))
    k = min(int(k), len(gallery))
    _, top = topk_inner_product(bank, gallery, k, block_rows)
    return np.bincount(top.ravel(), minlength=len(gallery)) > 0


def plain_top1(queries: np.ndarray, gallery: np.ndarray, block_rows: int = DEFAULT_QUERY_BLOCK) -> np.ndarray:
    """(Q,) int64: each query's rank-1 gallery row by the raw score (ties: lower index)."""
    _, first = DebiasedIndex(gallery).search(queries, 1, block_rows)
    return first[:, 0]


def inverted_softmax_bias(
    lse_gallery_bank: np.ndarray | None, lse_query_bank: np.ndarray | None, beta1: float, beta2: float
) -> np.ndarray:
    """(N,) float32 bias whose debiased ranking equals DualIS's (inverted softmax when ``beta1 == 0``).

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


def product_key(scores: np.ndarray, beta: float, lse: np.ndarray) -> np.ndarray:
    """float64 key ranking like ``s * exp(beta s - lse)`` (raw score times one inverted-softmax factor).

    Computed exactly in logs: ``t = log|s| + beta s - lse``; positive products rank
    above zeros above negative ones; within positives a larger ``t`` is better,
    within negatives a smaller one.  No exp, so nothing under- or overflows.
    """
    s = scores.astype(np.float64)
    with np.errstate(divide="ignore"):
        t = np.log(np.abs(s)) + beta * s - np.asarray(lse, dtype=np.float64)[None, :]
    finite = np.isfinite(t)
    big = 1.0 + (float(np.abs(t[finite]).max()) if finite.any() else 0.0)
    key = np.zeros_like(s)
    pos, neg = s > 0, s < 0
    key[pos] = big + t[pos]
    key[neg] = -big - t[neg]
    return key


def _rows_per_block(block_rows: int, n_gallery: int) -> int:
    return max(1, min(int(block_rows), (1 << 22) // max(1, n_gallery)))


def rank_product(
    queries: np.ndarray,
    gallery: np.ndarray,
    beta: float,
    lse: np.ndarray,
    top_k: int,
    block_rows: int = DEFAULT_QUERY_BLOCK,
) -> np.ndarray:
    """(Q, top_k) ranking by ``s(q, r) * exp(beta s(q, r)) / exp(lse(r))``, ties by lower index."""
    k = min(top_k, len(gallery))
    out = np.empty((len(queries), k), dtype=np.int64)
    g_t = np.ascontiguousarray(np.asarray(gallery, dtype=np.float32).T)
    step = _rows_per_block(block_rows, len(gallery))
    for start in range(0, len(queries), step):
        stop = min(len(queries), start + step)
        s = np.ascontiguousarray(queries[start:stop], dtype=np.float32) @ g_t
        out[start:stop] = top_k_exact(product_key(s, beta, lse), k)[1]
    return out


# ---------------------------------------------------------------------------
# Rankers: each returns (Q, top_k) gallery indices, best first, ties by lower index
# ---------------------------------------------------------------------------
def rank_dn(
    queries: np.ndarray,
    gallery: np.ndarray,
    reference: np.ndarray,
    dn_lambda: float,
    gallery_bank: np.ndarray | None = None,
    top_k: int = 10,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Distribution Normalization: zero-centre both sides by ``lam`` x the reference means, then rank.

    For ranking one query the gallery-side shift only adds ``-lam q . mean(Rhat)``,
    the same for every item, so ``gallery_bank`` moves scores, never rankings.
    """
    bank = gallery if gallery_bank is None else gallery_bank
    _check_dims(("queries", queries), ("gallery", gallery), ("reference", reference), ("gallery bank", bank))
    q_mean = reference.mean(axis=0, dtype=np.float64).astype(np.float32)
    g_mean = bank.mean(axis=0, dtype=np.float64).astype(np.float32)
    lam = np.float32(dn_lambda)
    shifted_gallery = gallery - lam * g_mean
    shifted_queries = queries - lam * q_mean
    _, idx = DebiasedIndex(shifted_gallery).search(shifted_queries, top_k, block_rows, progress)
    return idx


def dualis_bias(
    gallery: np.ndarray,
    reference: np.ndarray,
    beta1: float,
    beta2: float,
    gallery_bank: np.ndarray | None = None,
    block_rows: int = 1024,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(N,) float32 DualIS bias (plain inverted softmax when ``beta1 == 0``)."""
    bank = gallery if gallery_bank is None else gallery_bank
    l1 = log_sum_exp_scores(gallery, bank, [beta1], block_rows)[0] if beta1 > 0 else None
    l2 = log_sum_exp_scores(gallery, reference, [beta2], block_rows, progress=progress)[0] if beta2 > 0 else None
    return inverted_softmax_bias(l1, l2, beta1, beta2)


def rank_inverted_softmax(
    queries: np.ndarray,
    gallery: np.ndarray,
    reference: np.ndarray,
    beta: float,
    top_k: int = 10,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Plain querybank inverted softmax (method ``is``): every query renormalised."""
    if not beta > 0:
        raise ParameterError(f"inverted softmax beta must be > 0, got {beta}")
    bias = dualis_bias(gallery, reference, 0.0, beta)
    _, idx = DebiasedIndex(gallery, bias).search(queries, top_k, block_rows, progress)
    return idx


def _search_split(
    queries: np.ndarray, gallery: np.ndarray, active: np.ndarray, bias: np.ndarray, top_k: int, block_rows: int
) -> np.ndarray:
    """Rows with ``active`` ranked with ``bias``, the others by the raw score."""
    k = min(top_k, len(gallery))
    out = np.empty((len(queries), k), dtype=np.int64)
    for flag, b in ((True, bias), (False, None)):
        rows = np.flatnonzero(active == flag)
        if len(rows):
            out[rows] = DebiasedIndex(gallery, b).search(queries[rows], k, block_rows)[1]
    return out


def rank_qbnorm(
    queries: np.ndarray,
    gallery: np.ndarray,
    reference: np.ndarray,
    beta: float,
    top_k: int = 10,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
    activation_k: int = 1,
    top1: np.ndarray | None = None,
) -> np.ndarray:
    """QB-Norm's Dynamic Inverted Softmax (``dynamic_inverted_softmax.py``).

    Activation set: gallery items in the top ``activation_k`` of some querybank
    row.  A query whose plain top-1 is in it ranks by the querybank inverted
    softmax (beta); every other query keeps its raw scores.
    """
    if not beta > 0:
        raise ParameterError(f"QBNorm beta must be > 0, got {beta}")
    active_items = activation_set(gallery, reference, activation_k)
    if top1 is None:
        top1 = plain_top1(queries, gallery, block_rows)
    bias = dualis_bias(gallery, reference, 0.0, beta)
    out = _search_split(queries, gallery, active_items[top1], bias, top_k, block_rows)
    if progress:
        progress(len(queries), len(queries))
    return out


def rank_dualis(
    queries: np.ndarray,
    gallery: np.ndarray,
    reference: np.ndarray,
    beta1: float,
    beta2: float,
    gallery_bank: np.ndarray | None = None,
    top_k: int = 10,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """DBNorm DualIS ranking (NNN paper Eq. 3-5)."""
    bias = dualis_bias(gallery, reference, beta1, beta2, gallery_bank)
    _, idx = DebiasedIndex(gallery, bias).search(queries, top_k, block_rows, progress)
    return idx


@dataclass
class DualDISState:
    """What DualDIS precomputes: both log-sum-exp terms and both activation sets."""

    lse_gallery_bank: np.ndarray  # (N,) float64; log |bank| when beta1 = 0
    lse_query_bank: np.ndarray  # (N,) float64; log |reference| when beta2 = 0
    active_gallery_bank: np.ndarray  # (N,) bool
    active_query_bank: np.ndarray  # (N,) bool


def _lse_or_const(gallery, bank, beta, block_rows):
    if beta > 0:
        return log_sum_exp_scores(gallery, bank, [beta], block_rows)[0]
    return np.full(len(gallery), math.log(len(bank)))


def dualdis_state(
    gallery: np.ndarray,
    reference: np.ndarray,
    beta1: float,
    beta2: float,
    gallery_bank: np.ndarray | None = None,
    block_rows: int = 1024,
    activation_k: int = 1,
) -> DualDISState:
    bank = gallery if gallery_bank is None else gallery_bank
    return DualDISState(
        _lse_or_const(gallery, bank, beta1, block_rows),
        _lse_or_const(gallery, reference, beta2, block_rows),
        activation_set(gallery, bank, activation_k),
        activation_set(gallery, reference, activation_k),
    )


def dualdis_groups(top1: np.ndarray, state: DualDISState) -> dict[str, np.ndarray]:
    """Query rows by which DualDIS factors are active: ``both``, ``gallery_only``, ``query_only``, ``neither``."""
    use_r = state.active_gallery_bank[top1]
    use_q = state.active_query_bank[top1]
    return {
        "both": np.flatnonzero(use_r & use_q),
        "gallery_only": np.flatnonzero(use_r & ~use_q),
        "query_only": np.flatnonzero(~use_r & use_q),
        "neither": np.flatnonzero(~use_r & ~use_q),
    }


def rank_dualdis(
    queries: np.ndarray,
    gallery: np.ndarray,
    reference: np.ndarray,
    beta1: float,
    beta2: float,
    gallery_bank: np.ndarray | None = None,
    top_k: int = 10,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    top1: np.ndarray | None = None,
    state: DualDISState | None = None,
    progress: ProgressFn | None = None,
    activation_k: int = 1,
) -> np.ndarray:
    """DBNorm DualDIS ranking (NNN paper App. A1), inactive factors replaced by the raw score.

    ``top1`` (the plain rank-1 item of each query) is computed when not given.
    Both factors active: DualIS (a per-item bias).  One active: ``s * shat``
    (:func:`rank_product`).  Neither: the raw score ``s`` (see the module
    docstring for why not ``s * s``).
    """
    if beta1 + beta2 <= 0:
        raise ParameterError("DualDIS needs beta1 + beta2 > 0")
    if state is None:
        state = dualdis_state(gallery, reference, beta1, beta2, gallery_bank, activation_k=activation_k)
    if top1 is None:
        top1 = plain_top1(queries, gallery, block_rows)
    k = min(top_k, len(gallery))
    out = np.empty((len(queries), k), dtype=np.int64)
    groups = dualdis_groups(top1, state)
    rows = groups["both"]
    if len(rows):
        bias = inverted_softmax_bias(state.lse_gallery_bank, state.lse_query_bank, beta1, beta2)
        out[rows] = DebiasedIndex(gallery, bias).search(queries[rows], k, block_rows)[1]
    for name, beta, lse in (
        ("gallery_only", beta1, state.lse_gallery_bank),
        ("query_only", beta2, state.lse_query_bank),
    ):
        rows = groups[name]
        if len(rows):
            out[rows] = rank_product(queries[rows], gallery, beta, lse, k, block_rows)
    rows = groups["neither"]
    if len(rows):
        out[rows] = DebiasedIndex(gallery).search(queries[rows], k, block_rows)[1]
    if progress:
        progress(len(queries), len(queries))
    return out


def rank_method(
    method: str,
    queries: np.ndarray,
    gallery: np.ndarray,
    reference: np.ndarray,
    params: BaselineParams,
    gallery_bank: np.ndarray | None = None,
    top_k: int = 10,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    top1: np.ndarray | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(Q, top_k) ranking of one comparison method (``dn``, ``qbnorm``, ``is``, ``dbnorm``, ``dbnorm_dis``)."""
    method = METHOD_ALIASES.get(method, method)
    if method == "dn":
        return rank_dn(queries, gallery, reference, params.dn_lambda, gallery_bank, top_k, block_rows, progress)
    if method == "qbnorm":
        return rank_qbnorm(
            queries,
            gallery,
            reference,
            params.qb_beta,
            top_k,
            block_rows,
            progress,
            activation_k=params.activation_k,
            top1=top1,
        )
    if method == "is":
        return rank_inverted_softmax(queries, gallery, reference, params.qb_beta, top_k, block_rows, progress)
    if method == "dbnorm":
        return rank_dualis(
            queries, gallery, reference, params.db_beta1, params.db_beta2, gallery_bank, top_k, block_rows, progress
        )
    if method == "dbnorm_dis":
        return rank_dualdis(
            queries,
            gallery,
            reference,
            params.db_beta1,
            params.db_beta2,
            gallery_bank,
            top_k,
            block_rows,
            top1=top1,
            progress=progress,
            activation_k=params.activation_k,
        )
    raise ParameterError(f"unknown comparison method {method!r}; choose from {', '.join(BANK_METHODS)}")
