"""Search depth (nprobe / efSearch): set it, or tune it to a recall target on a sample, as autofaiss does."""

from __future__ import annotations

import numpy as np

from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, ProgressFn, sort_ties
from nnn_cli.scale.index.build import _as_hnsw, _as_ivf


def index_topk(
    index, queries: np.ndarray, k: int, block_rows: int = DEFAULT_QUERY_BLOCK, progress: ProgressFn | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) (Q, k) from ``index``, best first, ties by lower id; missing results have id -1."""
    nq = len(queries)
    scores = np.empty((nq, k), dtype=np.float32)
    ids = np.empty((nq, k), dtype=np.int64)
    for start in range(0, nq, block_rows):
        stop = min(nq, start + block_rows)
        d, i = index.search(np.ascontiguousarray(queries[start:stop], dtype=np.float32), k)
        d = np.where(i < 0, -np.inf, d).astype(np.float32)
        scores[start:stop], ids[start:stop] = sort_ties(d, i)
        if progress:
            progress(stop, nq)
    return scores, ids


def topk_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over rows of |approx top-k ids ∩ exact top-k ids| / k."""
    k = exact_ids.shape[1]
    hits = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx_ids, exact_ids))
    return hits / (k * len(exact_ids))


def score_recall(approx_scores: np.ndarray, exact_scores: np.ndarray) -> float:
    """Top-k recall from scores: share of approximate results scoring at least the exact k-th score.

    Equal to id-based recall when scores are distinct; needs no ids, so the
    exact side can be streamed.  A 1e-5 tolerance absorbs BLAS rounding.
    """
    kth = exact_scores[:, -1:] - 1e-5 * np.maximum(1.0, np.abs(exact_scores[:, -1:]))
    hits = (np.isfinite(approx_scores) & (approx_scores >= kth)).sum(axis=1)
    return float(np.minimum(hits, exact_scores.shape[1]).sum() / exact_scores.size)


def depth_values(index, k: int) -> list[int]:
    """Candidate nprobe (steps of sqrt 2) / efSearch (doubling) settings, shallow to deep."""
    knob = depth_knob(index)
    if knob == "nprobe":
        # steps of sqrt(2) (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, ...): each probed list costs a full
        # share of the scan, so overshooting the target by a doubling is expensive at scale
        limit = int(_as_ivf(index).nlist)
        return sorted({min(limit, int(round(2 ** (i / 2)))) for i in range(62) if 2 ** ((i - 1) / 2) < limit})
    if knob == "ef_search":
        return [v for v in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if v >= k] or [4096]
    return []


def tune_depth(index, measure, k: int, target: float) -> dict:
    """Smallest nprobe / efSearch of :func:`depth_values` whose measured recall reaches ``target``.

    ``measure()`` returns the recall of the index as currently set.  Returns
    ``{"knob", "value", "recall", "reached"}``; if even the deepest setting
    misses the target, the deepest one is kept and ``reached`` is False.
    """
    knob = depth_knob(index)
    if knob is None:
        rec = measure()
        return {"knob": None, "value": None, "recall": rec, "reached": rec >= target}
    result = {}
    for value in depth_values(index, k):
        set_search_depth(index, **{knob: value})
        rec = measure()
        result = {"knob": knob, "value": int(value), "recall": float(rec), "reached": rec >= target}
        if rec >= target:
            break
    return result


def set_search_depth(index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set nprobe (IVF) or efSearch (HNSW) where the index has them."""
    ivf = _as_ivf(index)
    if ivf is not None and nprobe:
        ivf.nprobe = int(min(nprobe, ivf.nlist))
    hnsw = _as_hnsw(index)
    if hnsw is not None and ef_search:
        hnsw.hnsw.efSearch = int(ef_search)


def depth_knob(index) -> str | None:
    """'nprobe', 'ef_search' or None (nothing to tune)."""
    if _as_ivf(index) is not None:
        return "nprobe"
    if _as_hnsw(index) is not None:
        return "ef_search"
    return None


RECALL_CONFIDENCE_Z = 4.0
"""The probe gap is tuned until the sample's recall minus this many standard errors (normal approximation
over the sample's rows) reaches the target.  More than two: the gap (and the list prefix, one of seven:
:data:`~nnn_cli.scale.index.steps.PROBE_PREFIXES`) is chosen and checked on the same rows, and picking the
cheapest setting that passes favours a lucky sample; measured with 2 (a 97.7% bound taken alone), 500 rows
reading 0.9595 (200k: 0.9597) gave 0.9501 (200k: 0.9515) on 2,000 other rows.  At 1M x 1M (d=512,
clustered), with the 2,000 rows of bench_scale.py as the judge: whole lists, z=3 read 0.9633 on the 500 and
gave 0.9518; with the prefixes, z=3 read 0.9613 and gave 0.9488 (below the target), z=3.5 0.9522 and
z=4 0.9533 (70% prefixes, 3,451 vectors a row against 4,762 for whole lists at z=3)."""

MAX_PROBES = 64
"""The most lists one row probes under the gap rule."""


def score_floor(exact_scores: np.ndarray) -> np.ndarray:
    """Each row's exact k-th score less :func:`score_recall`'s tolerance: a result at or above it is a hit."""
    kth = exact_scores[:, -1]
    return (kth - 1e-5 * np.maximum(1.0, np.abs(kth))).astype(np.float32)


def gap_curve(gaps: np.ndarray, hits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gap values, mean recall, standard error of the mean) of the sample when every row probes its lists
    whose centroid score is within the gap of its best, for each gap at which a probe is added.

    ``gaps`` (rows, P): best score minus each probed list's score (non-decreasing along a row; ``inf`` for
    none); ``hits`` (rows, P): each list's vectors at or above the row's exact k-th score.  A row's recall
    is min(k, hits of its probed lists) / k (as :func:`score_recall` counts); adding a row's next list
    raises it by a known step, so the mean and the mean of squares over rows are cumulative sums over the
    (row, list) pairs sorted by gap.
    """
    n = len(gaps)
    capped = np.minimum(np.cumsum(hits, axis=1), k) / k
    before = np.hstack([np.zeros((n, 1)), capped[:, :-1]])
    first = capped[:, 0]
    g, step, step2 = gaps[:, 1:].ravel(), (capped - before)[:, 1:].ravel(), (capped**2 - before**2)[:, 1:].ravel()
    keep = np.isfinite(g)
    g, step, step2 = g[keep], step[keep], step2[keep]
    order = np.argsort(g, kind="stable")
    g = np.concatenate([[0.0], g[order]])
    total = first.sum() + np.concatenate([[0.0], np.cumsum(step[order])])
    total2 = (first**2).sum() + np.concatenate([[0.0], np.cumsum(step2[order])])
    # one point per distinct gap: the last of equal gaps (every pair at that gap is probed)
    last = np.flatnonzero(np.append(np.diff(g) > 0, True))
    mean = total[last] / n
    var = np.maximum(total2[last] / n - mean**2, 0.0)
    return g[last], mean, np.sqrt(var / max(1, n - 1))


def choose_gap(gaps: np.ndarray, hits: np.ndarray, k: int, target: float, z: float = RECALL_CONFIDENCE_Z) -> dict:
    """The smallest probe gap whose sample recall, less ``z`` standard errors, reaches ``target``
    (``{"gap", "predicted_recall", "lower_bound", "reached"}``; the largest gap when none does).

    The gap returned lies halfway to the next larger gap of the sample, so float rounding of
    ``best - gap`` cannot drop a list the choice counted on.
    """
    values, mean, se = gap_curve(gaps, hits, k)
    ok = np.flatnonzero(mean - z * se >= target)
    i = int(ok[0]) if len(ok) else len(values) - 1
    gap = float(values[i] + values[i + 1]) / 2 if i + 1 < len(values) else float(values[i]) * (1 + 1e-3) + 1e-6
    return {
        "gap": gap,
        "predicted_recall": float(mean[i]),
        "lower_bound": float(mean[i] - z * se[i]),
        "reached": bool(len(ok)),
    }
