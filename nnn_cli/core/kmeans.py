"""Spherical k-means and nearest-centroid assignment by GEMM: the coarse quantizer of our IVF indexes.

faiss's ``Clustering`` and ``IndexIVF.add`` assign points through
``IndexFlatIP.search``, which runs at 20-30 GFLOP/s here against 140-160 for a
plain BLAS GEMM (bench_scale.py).  For a cold NNN run over a million
reference rows the assignment is most of the index build, so we assign with
GEMM tiles and hand faiss the finished lists (``IndexIVF.add_core``).

Deterministic: the initial centroids are evenly spaced sample rows, ties go to
the lower centroid, and empty clusters are re-seeded with the worst-served
points.
"""

from __future__ import annotations

import numpy as np

from nnn_cli.core.topk import SCORE_TILE_ELEMENTS, run_parallel, tile_operand, tile_scores


def assign(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels (n,) int64, best scores (n,) float32): each row's highest-inner-product centroid.

    One single-threaded GEMM per block of rows (the exact engine's threads, :func:`run_parallel`): the
    same labels whatever the thread count, and it runs under the BLAS limit a step may hold (the leak
    sketch computed beside it)."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    labels = np.empty(len(points), dtype=np.int64)
    best = np.empty(len(points), dtype=np.float32)
    rows = max(1, SCORE_TILE_ELEMENTS // max(1, len(centroids)))
    operand = tile_operand(np.ascontiguousarray(centroids, dtype=np.float32), copy=True)

    def one(start: int) -> None:
        scores = tile_scores(tile_operand(points[start : start + rows]), operand)
        lab = scores.argmax(axis=1)  # first maximum: ties go to the lower centroid
        labels[start : start + rows] = lab
        best[start : start + rows] = scores[np.arange(len(lab)), lab]

    run_parallel(one, list(range(0, len(points), rows)))
    return labels, best


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


def spherical_kmeans(points: np.ndarray, n_clusters: int, iterations: int = 10) -> np.ndarray:
    """(n_clusters, d) unit-norm centroids maximising the summed inner product of points to their centroid.

    Lloyd iterations: assign by GEMM, then each centroid is its members' mean,
    normalised (the inner-product k-means that faiss uses for IVF with
    ``METRIC_INNER_PRODUCT``).
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    n = len(points)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"need 1 <= n_clusters <= {n} points, got {n_clusters}")
    start = np.linspace(0, n - 1, n_clusters).astype(np.int64)
    centroids = _normalise(points[start])
    for _ in range(iterations):
        labels, best = assign(points, centroids)
        sums = np.zeros_like(centroids, dtype=np.float64)
        _grouped_sum(points, labels, sums)
        counts = np.bincount(labels, minlength=n_clusters)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            # re-seed with the points their centroid serves worst (lowest best score), lower row first
            worst = np.argsort(best, kind="stable")[: len(empty)]
            sums[empty] = points[worst]
        centroids = _normalise(sums)
    return centroids


def _grouped_sum(points: np.ndarray, labels: np.ndarray, out: np.ndarray) -> None:
    """out[c] += sum of points labelled c (float64): sort by label, then one contiguous sum per group.

    One small numpy call per cluster; measured faster than ``np.add.at``,
    ``reduceat`` or a cumulative sum over the sorted rows.
    """
    order = np.argsort(labels, kind="stable")
    ordered = points[order]
    counts = np.bincount(labels, minlength=len(out))
    ends = np.cumsum(counts)
    for c in np.flatnonzero(counts):
        out[c] += ordered[ends[c] - counts[c] : ends[c]].sum(axis=0, dtype=np.float64)
