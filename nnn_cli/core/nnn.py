"""The NNN math: per-candidate bias from the k nearest reference queries.

``b(r) = alpha * mean of the k highest scores s(q, r), q in the reference set``
(paper, Eq. 1).  Debiased retrieval ranks by ``s(q, r) - b(r)`` (Eq. 2).

The formula lives here and only here (:func:`bias_from_topk`): every path
(exact, streamed, indexed, incremental, tune's grid) computes a top-k of
reference scores and hands it to it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, ProgressFn, topk_scores
from nnn_cli.errors import MismatchError, ParameterError


def check_k(k: int, n_reference: int) -> int:
    """Validate k against the reference size (1 <= k <= M)."""
    if int(k) != k or k < 1:
        raise ParameterError(f"k must be an integer >= 1, got {k}")
    if k > n_reference:
        raise ParameterError(f"k={k} is larger than the reference set ({n_reference} rows); use k <= {n_reference}")
    return int(k)


def check_same_dims(named_dims: Iterable[tuple[str, int]]) -> int:
    """The one dimension rule: the shared ``d`` of named vector sets, or :class:`MismatchError` naming
    each (``dimension mismatch: gallery d=8, reference d=4``).  Arrays (:func:`check_dims`), sources
    (``nnn_cli.data.inputs.check_same_dim``) and the engines all check through it."""
    dims = list(named_dims)
    if len({d for _, d in dims}) > 1:
        raise MismatchError("dimension mismatch: " + ", ".join(f"{n} d={d}" for n, d in dims))
    return dims[0][1]


def check_dims(**arrays: np.ndarray | None) -> int:
    """The shared dimension of 2-D arrays given by name (None skipped); :func:`check_same_dims`."""
    return check_same_dims((name, a.shape[1]) for name, a in arrays.items() if a is not None)


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise ParameterError(f"alpha must be a finite number >= 0, got {alpha}")
    return alpha


def reference_topk(
    gallery: np.ndarray,
    reference: np.ndarray,
    kmax: int,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(N, kmax) float32: for each gallery row, its kmax highest reference scores, descending.

    Exact: GEMM tiles plus ``np.partition`` (:func:`nnn_cli.core.topk.topk_scores`),
    the fastest of faiss ``IndexFlatIP.search``, ``faiss.knn`` and this one as
    measured by ``bench/bench_scale.py``.  The GEMM tiles are fixed
    (``block_rows`` is accepted for compatibility and no longer changes the
    blocking) so streamed and in-memory results are bit-identical.
    """
    check_dims(gallery=gallery, reference=reference)
    kmax = check_k(kmax, len(reference))
    return topk_scores(gallery, reference, kmax, progress)


def bias_from_topk(topk_scores: np.ndarray, alpha: float, k: int) -> np.ndarray:
    """(N,) float32 bias ``alpha * mean(topk_scores[:, :k])``."""
    k = check_k(k, topk_scores.shape[1])
    alpha = check_alpha(alpha)
    means = topk_scores[:, :k].astype(np.float64).mean(axis=1)
    bias = (alpha * means).astype(np.float32)
    if not np.isfinite(bias).all():
        from nnn_cli.errors import ParameterError

        row = int(np.argmin(np.isfinite(bias)))
        raise ParameterError(
            f"gallery row {row}: its scores overflow float32 (inner products beyond 3.4e38); "
            "rescale the vectors or use --metric cosine"
        )
    return bias


def compute_bias(
    gallery: np.ndarray,
    reference: np.ndarray,
    alpha: float,
    k: int,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """(N,) float32 NNN bias of every gallery row against the reference queries (exact)."""
    check_alpha(alpha)
    check_k(k, len(reference))
    return bias_from_topk(reference_topk(gallery, reference, k, block_rows, progress), alpha, k)


def merge_topk(stored: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """(N, k) float32: the k highest of each row's stored and new scores, descending."""
    if len(stored) != len(new):
        raise MismatchError(f"top-k rows differ: stored {len(stored)}, new {len(new)}")
    both = np.concatenate([np.asarray(stored, np.float32), np.asarray(new, np.float32)], axis=1)
    if k > both.shape[1]:
        raise ParameterError(f"k={k} is larger than the {both.shape[1]} scores available per row")
    return np.ascontiguousarray(np.sort(both, axis=1)[:, ::-1][:, :k])
