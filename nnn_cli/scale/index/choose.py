"""Choose an index (autofaiss's first stage): flat | ivf | hnsw | factory string, with a cost model.

``auto`` compares a cost model of exact search (N x M x d multiply-adds) with
an IVF index's training + adding + probing and picks exact unless the index
is predicted to be :data:`AUTO_MIN_GAIN` times cheaper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nnn_cli.errors import ParameterError

INDEX_KINDS = ("flat", "ivf", "hnsw", "auto")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
KMEANS_ITERATIONS = 10
TRAIN_POINTS_PER_LIST = 50
GEMM_KMEANS_ITERATIONS = 6
GEMM_TRAIN_POINTS_PER_LIST = 40
"""Our GEMM-built IVF-Flat trains on fewer points and iterations than faiss's defaults above: measured at
1M x 1M (d=512, clustered, 1,000 lists), 39 points a list (faiss's minimum) and 6 iterations gave the same recall at every
nprobe (0.924 / 0.976 at 3 / 4 against 0.926 / 0.974) and the same lists' sizes scanned, in half the time."""
AUTO_MIN_GAIN = 4.0
"""``auto`` picks an approximate index only when its predicted cost is this many times lower than exact."""
OVERFETCH_QUANTIZED = 4
"""Default candidates per result (k x this) re-ranked exactly when the gallery index stores quantized codes."""
TUNE_SAMPLE = 1000
"""Query rows used to measure recall against exact top-k when tuning (``--recall``)."""


@dataclass
class IndexChoice:
    """What index to use and why: ``kind`` is flat | ivf | hnsw | factory."""

    kind: str
    factory: str | None = None
    nlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    recall_target: float | None = None
    probe_gap: float | None = None
    probe_max: int | None = None
    probe_flat: bool | None = None
    probe_prefix: float | None = None
    reason: str = ""
    tuned: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def describe(self) -> str:
        if self.kind == "flat":
            return "flat (exact)"
        if self.kind == "ivf" and self.probe_gap is not None:
            return (
                f"ivf (nlist={self.nlist}, lists within {self.probe_gap:.4g} of the best, "
                f"at most {self.probe_max}"
                + (f", the first {self.probe_prefix:.0%} of each by centroid score" if self.probe_prefix else "")
                + f"; nprobe={self.nprobe} for faiss)"
            )
        if self.kind == "ivf":
            return f"ivf (nlist={self.nlist}, nprobe={self.nprobe})"
        if self.kind == "hnsw":
            return f"hnsw (M={HNSW_M}, efSearch={self.ef_search})"
        depth = f" (nprobe={self.nprobe})" if self.nprobe else f" (efSearch={self.ef_search})" if self.ef_search else ""
        if self.kind == "loaded":
            return f"loaded from {self.factory}" + depth
        return f"faiss factory {self.factory!r}" + depth

    def to_dict(self) -> dict:
        out = {"index": self.kind, "index_description": self.describe(), "index_reason": self.reason}
        for key in (
            "factory",
            "nlist",
            "nprobe",
            "ef_search",
            "recall_target",
            "probe_gap",
            "probe_max",
            "probe_flat",
            "probe_prefix",
        ):
            value = getattr(self, key)
            if value is not None:
                out[f"index_{key}"] = value
        out.update({f"index_{k}": v for k, v in self.tuned.items()})
        return out


def default_nlist(n: int) -> int:
    """About sqrt(n) lists, with at least 39 training points per list (faiss's minimum).

    Fewer, larger lists than the usual 4 sqrt(n): for a cold NNN run (N about M)
    k-means training and assignment dominate; measured at M=118k, d=512,
    4 sqrt(M) lists took 40 s to build against 5 s for the exact bias.
    """
    return int(max(1, min(n // 39, round(math.sqrt(n)))))


def check_recall_target(recall: float | None) -> float | None:
    if recall is None:
        return None
    if not (0 < recall <= 1):
        raise ParameterError(f"--recall must be in (0, 1], got {recall}")
    return float(recall)


def estimate_costs(n_queries: int, n_database: int, dim: int, k: int) -> tuple[float, float]:
    """(exact, ivf) predicted multiply-adds for top-k of ``n_queries`` rows against ``n_database`` rows.

    IVF: k-means on TRAIN_POINTS_PER_LIST x nlist points for KMEANS_ITERATIONS,
    assigning every database row, probing ~sqrt(nlist) lists per query (a
    typical tuned nprobe at k <= 128), and the exact top-k of a tuning sample.
    """
    exact = float(n_queries) * n_database * dim
    nlist = default_nlist(n_database)
    train = min(n_database, TRAIN_POINTS_PER_LIST * nlist) * nlist * dim * KMEANS_ITERATIONS
    add = float(n_database) * nlist * dim
    nprobe = max(8, math.sqrt(nlist), k / 4)
    probe = float(n_queries) * (nlist + nprobe * n_database / nlist) * dim
    tune = min(n_queries, TUNE_SAMPLE) * float(n_database) * dim
    return exact, train + add + probe + tune


def choose_index(
    kind: str,
    n_queries: int,
    n_database: int,
    dim: int,
    k: int,
    nlist: int | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    recall: float | None = None,
) -> IndexChoice:
    """Validate ``--index`` and its parameters; resolve ``auto`` with the cost model."""
    recall = check_recall_target(recall)
    for name, value in (("--nlist", nlist), ("--nprobe", nprobe), ("--ef-search", ef_search)):
        if value is not None and value < 1:
            raise ParameterError(f"{name} must be >= 1, got {value}")
    kind = (kind or "flat").strip()
    if kind == "auto":
        exact, ivf = estimate_costs(n_queries, n_database, dim, k)
        gain = exact / max(ivf, 1.0)
        if gain >= AUTO_MIN_GAIN:
            kind, reason = (
                "ivf",
                (
                    f"auto: predicted {gain:.1f}x cheaper than exact for {n_queries} x {n_database} "
                    f"(>= {AUTO_MIN_GAIN:g}x needed)"
                ),
            )
            recall = recall if recall is not None else 0.95
        else:
            kind, reason = (
                "flat",
                (
                    f"auto: exact, since an approximate index would be at most {gain:.1f}x cheaper "
                    f"for {n_queries} x {n_database} (training does not pay below {AUTO_MIN_GAIN:g}x)"
                ),
            )
    else:
        reason = f"--index {kind}"
    if kind == "flat":
        return IndexChoice("flat", reason=reason)
    if kind == "ivf":
        nl = nlist or default_nlist(n_database)
        if nl > n_database:
            raise ParameterError(f"--nlist {nl} is larger than the {n_database} indexed rows")
        return IndexChoice(
            "ivf", nlist=nl, nprobe=nprobe or (None if recall else min(nl, 32)), recall_target=recall, reason=reason
        )
    if kind == "hnsw":
        return IndexChoice(
            "hnsw", ef_search=ef_search or (None if recall else max(128, 2 * k)), recall_target=recall, reason=reason
        )
    return IndexChoice(
        "factory",
        factory=kind,
        nprobe=nprobe,
        ef_search=ef_search,
        recall_target=recall,
        reason=f"faiss index factory string {kind!r}",
    )
