"""Choose NNN's alpha and k by sweeping a grid at about the cost of one evaluation (``nnn tune``).

Cost model.  One exact top-``kmax`` pass of the gallery against the reference
gives the bias of every grid cell (the mean of the top-k scores, for every k at
once).  Query x gallery scores are computed once, one block of queries at a
time (BLAS ``Q_block @ G.T``).  A cell is then decided without sorting and
without touching the whole score block again: the biases of all cells, after
removing a per-cell constant (which moves no ranking), lie in a per-item
envelope ``[lo_j, hi_j]``.  For each correct (query, item) pair that envelope
says which gallery items beat the correct item in *every* cell (counted once),
in *no* cell (dropped) or in *some* cells; only that last, small set is
compared exactly, cell by cell, with the same float32 arithmetic as a plain
debiased search and ties broken toward the lower gallery index.

Unsupervised mode picks alpha and k from the reference queries alone: see
:func:`tune_unsupervised`.

Why one module of about 450 lines: the supervised and unsupervised sweeps share the envelope
machinery (cell biases, per-item envelopes, exact per-cell re-checks) and the grid/result types;
splitting them would put the two users of one algorithm in different files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from nnn_cli.core.nnn import bias_from_topk, check_alpha, check_dims, reference_topk
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, QUERY_TILE, ProgressFn, score_rows, tile_operand
from nnn_cli.core.truth import Truth
from nnn_cli.errors import MismatchError, ParameterError

PAPER_ALPHAS = tuple(0.25 + 0.125 * i for i in range(11))
"""The paper's alpha grid (Appendix B): 0.25, 0.375, ..., 1.5."""
PAPER_KS = tuple(2**i for i in range(10))
"""The paper's k grid: 1, 2, 4, ..., 512."""
OBJECTIVES = ("R@1", "R@5", "R@10")
RANK_CAP = 10
"""Ranks are only resolved up to this cap: enough for Recall@1/5/10."""
SCORE_BLOCK_ELEMENTS = 1 << 23
"""Upper bound on the elements of one query x gallery score block (32 MiB of float32)."""
UNSUPERVISED_CRITERION = "entropy"
UNSUPERVISED_HOLDOUT = 0.2
UNSUPERVISED_TOLERANCE = 0.001


# ---------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------
@dataclass
class TuneResult:
    """The chosen (alpha, k), its score, the baseline's score and every grid cell.

    ``grid`` holds one dict per evaluated cell (``alpha``, ``k`` and the
    measured figures), alpha-major in the order of ``alphas`` x ``ks``; use
    :meth:`matrix` for an (alphas x ks) array of one figure, e.g. for a heatmap.
    """

    alpha: float
    k: int
    objective: str
    score: float
    baseline: float
    alphas: list[float]
    ks: list[int]
    grid: list[dict]
    baseline_metrics: dict
    mode: str = "supervised"
    skipped_ks: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_queries: int = 0
    n_gallery: int = 0
    n_reference: int = 0
    seconds: float = 0.0
    criterion: dict = field(default_factory=dict)

    def cell(self, alpha: float, k: int) -> dict:
        """The grid entry of one (alpha, k) cell."""
        for entry in self.grid:
            if entry["k"] == k and np.isclose(entry["alpha"], alpha):
                return entry
        raise KeyError(f"no grid cell alpha={alpha}, k={k}")

    def matrix(self, key: str | None = None) -> np.ndarray:
        """(len(alphas), len(ks)) float64 array of one figure per cell (default: the objective)."""
        key = key or self.objective
        out = np.full((len(self.alphas), len(self.ks)), np.nan)
        for entry in self.grid:
            out[self.alphas.index(entry["alpha"]), self.ks.index(entry["k"])] = entry[key]
        return out

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha,
            "k": self.k,
            "objective": self.objective,
            "score": self.score,
            "baseline": self.baseline,
            "mode": self.mode,
            "best": self.cell(self.alpha, self.k),
            "baseline_metrics": self.baseline_metrics,
            "alphas": self.alphas,
            "ks": self.ks,
            "skipped_ks": self.skipped_ks,
            "notes": self.notes,
            "criterion": self.criterion,
            "n_queries": self.n_queries,
            "n_gallery": self.n_gallery,
            "n_reference": self.n_reference,
            "seconds": round(self.seconds, 3),
            "grid": self.grid,
        }


# ---------------------------------------------------------------------------
# Grid checks and cell biases
# ---------------------------------------------------------------------------
def parse_list(text: str, kind: str) -> list:
    """Parse a comma list of alphas (``kind="alpha"``) or ks (``kind="k"``) from the command line."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ParameterError(f"the {kind} list {text!r} is empty; give comma-separated values")
    out = []
    for item in items:
        try:
            value = float(item) if kind == "alpha" else int(item)
        except ValueError:
            expected = "a number" if kind == "alpha" else "an integer"
            raise ParameterError(f"bad {kind} value {item!r} in {text!r}: expected {expected}") from None
        out.append(value)
    return out


def check_grid(alphas, ks, n_reference: int) -> tuple[list[float], list[int], list[int]]:
    """Sorted unique alphas, the usable ks (<= n_reference) and the skipped ks; raise on bad values."""
    alphas = [check_alpha(a) for a in alphas]
    if not alphas:
        raise ParameterError("the alpha grid is empty; give at least one value")
    ks = list(ks)
    if not ks:
        raise ParameterError("the k grid is empty; give at least one value")
    for k in ks:
        if int(k) != k or k < 1:
            raise ParameterError(f"k must be an integer >= 1, got {k}")
    ks = sorted({int(k) for k in ks})
    usable = [k for k in ks if k <= n_reference]
    skipped = [k for k in ks if k > n_reference]
    if not usable:
        raise ParameterError(
            f"every k in the grid ({ks}) is larger than the reference set ({n_reference} rows); use k <= {n_reference}"
        )
    return sorted(set(alphas)), usable, skipped


def cell_biases(topk_scores: np.ndarray, alphas: list[float], ks: list[int]) -> np.ndarray:
    """(len(alphas) * len(ks), N) float32 biases, alpha-major; each equals ``compute_bias`` for its cell."""
    out = np.empty((len(alphas) * len(ks), len(topk_scores)), dtype=np.float32)
    for ai, alpha in enumerate(alphas):
        for ki, k in enumerate(ks):
            out[ai * len(ks) + ki] = bias_from_topk(topk_scores, alpha, k)
    return out


def bias_envelope(biases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): per-item min and max over cells of the bias minus that cell's mean bias.

    Subtracting a per-cell constant changes no ranking in that cell, and it
    makes the envelope narrow (items' biases move together with k and alpha),
    which is what keeps the per-cell candidate sets small.
    """
    centred = biases.astype(np.float64) - biases.astype(np.float64).mean(axis=1, keepdims=True)
    return centred.min(axis=0).astype(np.float32), centred.max(axis=0).astype(np.float32)


def _block_rows(block_rows: int, n_gallery: int) -> int:
    """Query rows per score block: a function of the gallery size only (not of ``--block-size``), so
    every score comes from the same GEMM shapes in every run (see :func:`nnn_cli.core.topk.score_rows`)."""
    rows = max(1, SCORE_BLOCK_ELEMENTS // max(1, n_gallery))
    return rows // QUERY_TILE * QUERY_TILE if rows >= QUERY_TILE else rows


def _margin(scores: np.ndarray, biases: np.ndarray) -> float:
    """Slack for float32 rounding in the envelope tests (far above it, far below real gaps)."""
    scale = float(np.abs(scores).max(initial=0.0)) + float(np.abs(biases).max(initial=0.0))
    return 1e-5 * max(1.0, scale)


# ---------------------------------------------------------------------------
# Supervised: rank of the best correct item, for every cell
# ---------------------------------------------------------------------------
def truth_ranks(
    queries: np.ndarray,
    gallery: np.ndarray,
    truth: Truth,
    biases: np.ndarray,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(C, Q) uint8: rank (0-based, capped at ``RANK_CAP``) of each query's best-ranked correct item.

    Row c ranks by ``q . r - biases[c]`` (give a zero row for the baseline);
    an item outranks the correct one when its debiased score is higher, or equal
    with a lower index.  Queries without truth get ``RANK_CAP``.
    """
    n_cells, n_gallery = biases.shape
    lo, hi = bias_envelope(biases)
    order = np.argsort(truth.query, kind="stable")
    pair_query, pair_item = truth.query[order], truth.gallery[order]
    pair_rank = np.full((n_cells, len(order)), RANK_CAP, dtype=np.uint8)
    rows_per_block = _block_rows(block_rows, n_gallery)
    gallery_rows = tile_operand(np.asarray(gallery, dtype=np.float32))
    nq = len(queries)
    for start in range(0, nq, rows_per_block):
        stop = min(nq, start + rows_per_block)
        p0, p1 = np.searchsorted(pair_query, [start, stop])
        if p1 > p0:
            scores = score_rows(queries[start:stop], gallery_rows)
            local = pair_query[p0:p1] - start
            if len(local) == len(scores) and np.array_equal(local, np.arange(len(scores))):
                pair_rank[:, p0:p1] = _pair_ranks(scores, pair_item[p0:p1], biases, lo, hi)
            else:  # several (or no) correct items per query: one score row per pair, in bounded chunks
                for c0 in range(p0, p1, rows_per_block):
                    c1 = min(p1, c0 + rows_per_block)
                    pair_rank[:, c0:c1] = _pair_ranks(
                        scores[local[c0 - p0 : c1 - p0]], pair_item[c0:c1], biases, lo, hi
                    )
        if progress:
            progress(stop, nq)
    first = np.full((n_cells, truth.n_queries), RANK_CAP, dtype=np.uint8)
    if len(order):
        starts = np.flatnonzero(np.r_[True, pair_query[1:] != pair_query[:-1]])
        first[:, pair_query[starts]] = np.minimum.reduceat(pair_rank, starts, axis=1)
    return first


def _pair_ranks(
    scores: np.ndarray, items: np.ndarray, biases: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """(C, P) uint8 capped ranks of ``items[p]`` in score row p, for every cell."""
    n = len(items)
    row = np.arange(n)
    own = scores[row, items]
    margin = _margin(own, biases)
    work = np.subtract(scores, hi)
    always = work > (own - lo[items] + margin)[:, None]  # beats the correct item in every cell
    n_always = np.count_nonzero(always, axis=1)
    np.subtract(scores, lo, out=work)
    maybe = work >= (own - hi[items] - margin)[:, None]  # beats it in at least one cell, perhaps
    maybe &= ~always
    del work, always
    # Rows already out of the top RANK_CAP in every cell need no per-cell work.
    maybe[n_always >= RANK_CAP] = False
    rows, cols = np.nonzero(maybe)
    del maybe
    cand = scores[rows, cols]
    row_item = items[rows]
    lower_index = cols < row_item
    out = np.empty((len(biases), n), dtype=np.uint8)
    for c, bias in enumerate(biases):
        own_c = own - bias[items]
        cand_c = cand - bias[cols]
        own_r = own_c[rows]
        beats = (cand_c > own_r) | ((cand_c == own_r) & lower_index)
        count = np.bincount(rows[beats], minlength=n) + n_always
        out[c] = np.minimum(count, RANK_CAP)
    return out


def recall_from_ranks(first_rank: np.ndarray, has_truth: np.ndarray) -> dict[str, np.ndarray]:
    """``{"R@K": (C,) percent}`` from (C, Q) capped ranks."""
    n = max(1, int(has_truth.sum()))
    ranks = first_rank[:, has_truth]
    return {f"R@{k}": 100.0 * np.count_nonzero(ranks < k, axis=1) / n for k in (1, 5, 10)}


# ---------------------------------------------------------------------------
# Unsupervised: the top-1 item of every cell
# ---------------------------------------------------------------------------
def top1_per_cell(
    queries: np.ndarray,
    gallery: np.ndarray,
    biases: np.ndarray,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(C, Q) int64: the rank-1 gallery row of each query under each cell's bias (ties: lower index)."""
    n_cells, n_gallery = biases.shape
    lo, hi = bias_envelope(biases)
    out = np.empty((n_cells, len(queries)), dtype=np.int64)
    rows_per_block = _block_rows(block_rows, n_gallery)
    gallery_rows = tile_operand(np.asarray(gallery, dtype=np.float32))
    nq = len(queries)
    for start in range(0, nq, rows_per_block):
        stop = min(nq, start + rows_per_block)
        scores = score_rows(queries[start:stop], gallery_rows)
        out[:, start:stop] = _top1(scores, biases, lo, hi)
        if progress:
            progress(stop, nq)
    return out


def _top1(scores: np.ndarray, biases: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    n = len(scores)
    work = np.subtract(scores, hi)
    floor = work.max(axis=1) - _margin(scores, biases)  # every cell's winner scores at least this
    np.subtract(scores, lo, out=work)
    rows, cols = np.nonzero(work >= floor[:, None])  # row-major: sorted by row, then column
    del work
    cand = scores[rows, cols]
    starts = np.searchsorted(rows, np.arange(n))
    out = np.empty((len(biases), n), dtype=np.int64)
    for c, bias in enumerate(biases):
        value = cand - bias[cols]
        best = np.maximum.reduceat(value, starts)
        hits = np.flatnonzero(value == best[rows])
        out[c] = cols[hits[np.searchsorted(rows[hits], np.arange(n))]]
    return out


def retrieval_spread(top1: np.ndarray, n_gallery: int) -> dict[str, float]:
    """How evenly rank-1 retrievals spread over the gallery.

    ``entropy``: Shannon entropy of the retrieval counts over the largest
    possible (log of min(queries, gallery)), 0..1, higher is more even;
    ``skewness``/``kurtosis``: of the counts (the paper's hubness figures);
    ``coverage``: share of gallery items retrieved at least once; ``max``.
    """
    counts = np.bincount(top1, minlength=n_gallery).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    ceiling = np.log(min(len(top1), n_gallery))
    centred = counts - counts.mean()
    var = float(np.mean(centred**2))
    return {
        "entropy": float(-(p * np.log(p)).sum() / ceiling) if ceiling > 0 else 1.0,
        "skewness": float(np.mean(centred**3) / var**1.5) if var > 0 else 0.0,
        "kurtosis": float(np.mean(centred**4) / var**2 - 3.0) if var > 0 else 0.0,
        "coverage": float(np.mean(counts > 0)),
        "max": int(counts.max()),
    }


# ---------------------------------------------------------------------------
# Picking the winner
# ---------------------------------------------------------------------------
def pick_best(values: np.ndarray) -> int:
    """Index of the largest of the alpha-major cell values; ties go to the smaller alpha, then the smaller k.

    Cells are ordered by alpha, then k (both ascending), so the first maximum is the right one.
    """
    values = np.asarray(values, dtype=np.float64)
    return int(np.flatnonzero(values == values.max())[0])


def _grid_entries(alphas, ks, columns: dict[str, np.ndarray]) -> list[dict]:
    entries = []
    for ai, alpha in enumerate(alphas):
        for ki, k in enumerate(ks):
            c = ai * len(ks) + ki
            entries.append({"alpha": alpha, "k": k, **{name: _plain(values[c]) for name, values in columns.items()}})
    return entries


def _plain(value):
    return float(value) if isinstance(value, (float, np.floating)) else int(value)


def _skip_note(skipped, n_reference):
    if not skipped:
        return []
    return [f"skipped k={', '.join(map(str, skipped))}: larger than the reference set ({n_reference} rows)"]


def _check_shapes(gallery, reference, queries=None):
    check_dims(queries=queries, gallery=gallery, reference=reference)


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------
def tune_grid(
    queries: np.ndarray,
    gallery: np.ndarray,
    reference: np.ndarray,
    truth: Truth,
    alphas=PAPER_ALPHAS,
    ks=PAPER_KS,
    objective: str = "R@1",
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> TuneResult:
    """Sweep alpha x k on queries with known answers; pick the cell with the best ``objective``.

    Every cell's Recall@1/5/10 is exact (equal to ``compute_bias`` + ``search``
    for that cell, up to float32 rounding of near-ties).  Cells with k larger
    than the reference set are skipped (listed in ``skipped_ks`` and ``notes``).
    """
    if objective not in OBJECTIVES:
        raise ParameterError(f"unknown objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    _check_shapes(gallery, reference, queries)
    if truth.n_queries != len(queries):
        raise MismatchError(f"the ground truth is for {truth.n_queries} queries but there are {len(queries)}")
    t0 = time.perf_counter()
    alphas, ks_used, skipped = check_grid(alphas, ks, len(reference))
    topk = reference_topk(gallery, reference, max(ks_used), block_rows, progress)
    biases = np.vstack([np.zeros((1, len(gallery)), np.float32), cell_biases(topk, alphas, ks_used)])
    ranks = truth_ranks(queries, gallery, truth, biases, block_rows, progress)
    recall = recall_from_ranks(ranks, truth.has_truth())
    baseline = {name: float(values[0]) for name, values in recall.items()}
    cells = {name: values[1:] for name, values in recall.items()}
    best = pick_best(cells[objective])
    return TuneResult(
        alpha=alphas[best // len(ks_used)],
        k=ks_used[best % len(ks_used)],
        objective=objective,
        score=float(cells[objective][best]),
        baseline=baseline[objective],
        alphas=alphas,
        ks=ks_used,
        grid=_grid_entries(alphas, ks_used, cells),
        baseline_metrics=baseline,
        mode="supervised",
        skipped_ks=skipped,
        notes=_skip_note(skipped, len(reference)),
        n_queries=len(queries),
        n_gallery=len(gallery),
        n_reference=len(reference),
        seconds=time.perf_counter() - t0,
    )


def split_reference(n_reference: int, holdout: float = UNSUPERVISED_HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    """(bias rows, held-out rows): every round(1/holdout)-th row is held out (deterministic, spread evenly)."""
    if not 0 < holdout < 1:
        raise ParameterError(f"holdout must be between 0 and 1, got {holdout}")
    step = max(2, int(round(1 / holdout)))
    held = np.arange(0, n_reference, step)
    if len(held) == 0 or len(held) == n_reference:
        raise ParameterError(f"the reference set ({n_reference} rows) is too small to hold some out")
    keep = np.setdiff1d(np.arange(n_reference), held)
    return keep, held


def tune_unsupervised(
    gallery: np.ndarray,
    reference: np.ndarray,
    alphas=PAPER_ALPHAS,
    ks=PAPER_KS,
    holdout: float = UNSUPERVISED_HOLDOUT,
    tolerance: float = UNSUPERVISED_TOLERANCE,
    queries: np.ndarray | None = None,
    truth: Truth | None = None,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> TuneResult:
    """Pick alpha and k without ground truth, from the reference queries alone.

    Criterion: hold out every 5th reference query; compute the biases from the
    rest; retrieve the rank-1 gallery item of every held-out query in every
    cell; score each cell by the normalised entropy of the rank-1 retrieval
    counts (how evenly retrievals spread over the gallery: hubs lower it, and
    so does over-correction, which makes the lowest-bias items into new hubs).
    Among the cells within ``tolerance`` of the best entropy, take the one
    whose retrievals stay closest to the plain ones (most held-out queries
    keeping their baseline rank-1 item): the least intervention that reaches
    the even spread.  When ``queries`` and ``truth`` are given, every cell's
    Recall@1/5/10 is measured too (for reporting only; the pick ignores it).
    """
    if not 0 <= tolerance < 1:
        raise ParameterError(f"tolerance must be in [0, 1), got {tolerance}")
    _check_shapes(gallery, reference, queries)
    t0 = time.perf_counter()
    keep, held = split_reference(len(reference), holdout)
    alphas, ks_used, skipped = check_grid(alphas, ks, len(keep))
    topk = reference_topk(gallery, reference[keep], max(ks_used), block_rows, progress)
    biases = np.vstack([np.zeros((1, len(gallery)), np.float32), cell_biases(topk, alphas, ks_used)])
    top1 = top1_per_cell(reference[held], gallery, biases, block_rows, progress)
    spread = [retrieval_spread(row, len(gallery)) for row in top1]
    agreement = np.mean(top1 == top1[0], axis=1)
    columns = {name: np.array([s[name] for s in spread[1:]]) for name in spread[0]}
    columns["agreement"] = agreement[1:]
    entropy = columns["entropy"]
    near_best = entropy >= entropy.max() - tolerance
    best = pick_best(np.where(near_best, columns["agreement"], -np.inf))
    baseline_metrics = {**spread[0], "agreement": 1.0}
    if queries is not None and truth is not None:
        ranks = truth_ranks(queries, gallery, truth, biases, block_rows, progress)
        recall = recall_from_ranks(ranks, truth.has_truth())
        baseline_metrics.update({name: float(values[0]) for name, values in recall.items()})
        columns.update({name: values[1:] for name, values in recall.items()})
    return TuneResult(
        alpha=alphas[best // len(ks_used)],
        k=ks_used[best % len(ks_used)],
        objective=UNSUPERVISED_CRITERION,
        score=float(entropy[best]),
        baseline=float(spread[0]["entropy"]),
        alphas=alphas,
        ks=ks_used,
        grid=_grid_entries(alphas, ks_used, columns),
        baseline_metrics=baseline_metrics,
        mode="unsupervised",
        skipped_ks=skipped,
        notes=_skip_note(skipped, len(keep)),
        n_queries=len(held),
        n_gallery=len(gallery),
        n_reference=len(reference),
        seconds=time.perf_counter() - t0,
        criterion={
            "name": UNSUPERVISED_CRITERION,
            "holdout": holdout,
            "tolerance": tolerance,
            "n_bias_queries": int(len(keep)),
            "n_heldout_queries": int(len(held)),
        },
    )
