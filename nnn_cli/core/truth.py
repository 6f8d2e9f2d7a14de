"""Ground truth as (query, gallery) pairs, and first-hit ranks of a ranking."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnn_cli.errors import InputError, MismatchError


# ---------------------------------------------------------------------------
@dataclass
class Truth:
    """Correct (query, gallery) pairs; a query may have several correct gallery items."""

    query: np.ndarray  # (P,) int64
    gallery: np.ndarray  # (P,) int64
    n_queries: int

    @classmethod
    def from_array(cls, arr: np.ndarray, n_queries: int, n_gallery: int, name: str = "truth") -> Truth:
        arr = np.asarray(arr)
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise InputError(f"{name}: ground truth must hold integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        if arr.ndim == 1:
            if len(arr) != n_queries:
                raise MismatchError(f"{name}: has {len(arr)} entries but there are {n_queries} queries")
            q = np.arange(n_queries, dtype=np.int64)
            g = arr
        elif arr.ndim == 2 and arr.shape[1] == 2:
            q, g = arr[:, 0], arr[:, 1]
            if len(q) == 0:
                raise InputError(f"{name}: no (query, gallery) pairs")
            if q.min() < 0 or q.max() >= n_queries:
                raise InputError(
                    f"{name}: query row {int(q.max() if q.max() >= n_queries else q.min())} out of range [0, {n_queries})"
                )
        else:
            raise InputError(f"{name}: expected shape (Q,) or (P, 2), got {arr.shape}")
        if len(g) and (g.min() < 0 or g.max() >= n_gallery):
            bad = int(g.max() if g.max() >= n_gallery else g.min())
            raise InputError(f"{name}: gallery row {bad} out of range [0, {n_gallery})")
        return cls(q, g, n_queries)

    def has_truth(self) -> np.ndarray:
        """(Q,) bool: queries with at least one correct item (the recall denominator)."""
        out = np.zeros(self.n_queries, dtype=bool)
        out[self.query] = True
        return out

    def first_hit_rank(self, topk: np.ndarray) -> np.ndarray:
        """(Q,) 0-based rank of the first correct item in each row of ``topk``; K if none is there."""
        topk = np.asarray(topk)
        k = topk.shape[1]
        match = topk[self.query] == self.gallery[:, None]  # (P, K)
        pos = np.where(match.any(axis=1), match.argmax(axis=1), k)
        best = np.full(self.n_queries, k, dtype=np.int64)
        np.minimum.at(best, self.query, pos)
        return best
