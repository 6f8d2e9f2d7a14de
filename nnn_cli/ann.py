"""Approximate (and exact) faiss indexes for both NNN steps: choose, build, tune, save, load.

- Reference side (``nnn bias --index``): an inner-product index over the
  reference queries; each gallery item's top-k reference scores come from it.
- Gallery side (``nnn search --index``): an index over the augmented gallery
  ``[r, b]`` searched with ``[q, -1]``; candidates are re-ranked by their
  exact debiased score (see :func:`debiased_search`).

``auto`` compares a cost model of exact search (N x M x d multiply-adds) with
an IVF index's training + adding + probing and picks exact unless the index
is predicted to be :data:`AUTO_MIN_GAIN` times cheaper.  With ``--recall``
the probe depth (nprobe / efSearch) is tuned on a sample of query rows against
exact top-k, as autofaiss tunes nprobe.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, MismatchError, ParameterError
from .io import EmbeddingSource, atomic_output
from .topk import DEFAULT_QUERY_BLOCK, ProgressFn, faiss_module, sort_ties, topk_scores

INDEX_KINDS = ("flat", "ivf", "hnsw", "auto")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 64
KMEANS_ITERATIONS = 10
TRAIN_POINTS_PER_LIST = 50
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
    reason: str = ""
    tuned: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def describe(self) -> str:
        if self.kind == "flat":
            return "flat (exact)"
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
        for key in ("factory", "nlist", "nprobe", "ef_search", "recall_target"):
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


def choose_index(kind: str, n_queries: int, n_database: int, dim: int, k: int,
                 nlist: int | None = None, nprobe: int | None = None, ef_search: int | None = None,
                 recall: float | None = None) -> IndexChoice:
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
            kind, reason = "ivf", (f"auto: predicted {gain:.1f}x cheaper than exact for {n_queries} x {n_database} "
                                   f"(>= {AUTO_MIN_GAIN:g}x needed)")
            recall = recall if recall is not None else 0.95
        else:
            kind, reason = "flat", (f"auto: exact, since an approximate index would be at most {gain:.1f}x cheaper "
                                    f"for {n_queries} x {n_database} (training does not pay below {AUTO_MIN_GAIN:g}x)")
    else:
        reason = f"--index {kind}"
    if kind == "flat":
        return IndexChoice("flat", reason=reason)
    if kind == "ivf":
        nl = nlist or default_nlist(n_database)
        if nl > n_database:
            raise ParameterError(f"--nlist {nl} is larger than the {n_database} indexed rows")
        return IndexChoice("ivf", nlist=nl, nprobe=nprobe or (None if recall else min(nl, 32)),
                           recall_target=recall, reason=reason)
    if kind == "hnsw":
        return IndexChoice("hnsw", ef_search=ef_search or (None if recall else max(128, 2 * k)),
                           recall_target=recall, reason=reason)
    return IndexChoice("factory", factory=kind, nprobe=nprobe, ef_search=ef_search,
                       recall_target=recall, reason=f"faiss index factory string {kind!r}")


# ---------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------
def _n_rows(data) -> int:
    return data.n if isinstance(data, EmbeddingSource) else len(data)


def _dim(data) -> int:
    return data.dim if isinstance(data, EmbeddingSource) else data.shape[1]


def _blocks(data, metric: str, block_rows: int):
    if isinstance(data, EmbeddingSource):
        yield from data.iter_blocks(metric, block_rows)
    else:
        for start in range(0, len(data), block_rows):
            yield start, np.ascontiguousarray(data[start:start + block_rows], dtype=np.float32)


def _reused_chunks(data, metric: str, chunk_rows: int, read_rows: int = 16384):
    """Yield ``(start, chunk)`` of up to ``chunk_rows`` rows, filled from small validated reads into ONE
    buffer that the next chunk overwrites (so the caller must be done with a chunk before asking for the
    next): a large chunk then costs its own size, not several times it in conversion temporaries."""
    n = _n_rows(data)
    buf = np.empty((min(chunk_rows, n), _dim(data)), dtype=np.float32)
    fill, chunk_start = 0, 0
    for start, block in _blocks(data, metric, read_rows):
        while len(block):
            take = min(len(block), len(buf) - fill)
            buf[fill:fill + take] = block[:take]
            fill, block = fill + take, block[take:]
            if fill == len(buf) or chunk_start + fill == n:
                yield chunk_start, buf[:fill]
                chunk_start, fill = chunk_start + fill, 0


def sample_rows(data, n_sample: int, metric: str = "cosine", block_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(rows, positions): ``n_sample`` evenly spaced rows (deterministic), read in one streaming pass."""
    n = _n_rows(data)
    pos = np.unique(np.linspace(0, n - 1, num=min(n, n_sample)).astype(np.int64))
    if not isinstance(data, EmbeddingSource):
        return np.ascontiguousarray(data[pos], dtype=np.float32), pos
    return data.take_rows(pos, metric, block_rows), pos


def new_index(choice: IndexChoice, dim: int):
    """An empty faiss inner-product index for ``choice``."""
    faiss = faiss_module()
    if choice.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if choice.kind == "ivf":
        index = faiss.index_factory(dim, f"IVF{choice.nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.seed = 1234
        return index
    if choice.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return index
    try:
        return faiss.index_factory(dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else "invalid"
        raise ParameterError(f"--index {choice.factory!r}: not a faiss index factory string or one of "
                             f"{', '.join(INDEX_KINDS)} ({first})") from None


def build_index(data, choice: IndexChoice, metric: str = "cosine", block_rows: int = 65536,
                progress: ProgressFn | None = None):
    """Train (on a deterministic sample) and fill an index from an array or a streamed source."""
    dim, n = _dim(data), _n_rows(data)
    if choice.kind == "ivf":
        return _build_ivf_flat(data, choice, metric, block_rows, progress)
    index = new_index(choice, dim)
    if not index.is_trained:
        n_train = n
        nl = choice.nlist or _factory_nlist(index)
        if nl:
            n_train = min(n, max(TRAIN_POINTS_PER_LIST * nl, 39 * nl))
        train, _ = sample_rows(data, n_train, metric, block_rows)
        index.train(train)
        del train
    for start, block in _blocks(data, metric, block_rows):
        index.add(block)
        if progress:
            progress(start + len(block), n)
    return index


def _build_ivf_flat(data, choice: IndexChoice, metric: str, block_rows: int,
                    progress: ProgressFn | None = None):
    """An ``IndexIVFFlat`` trained and filled with GEMM assignment (:mod:`nnn_cli.kmeans`).

    The same index type as ``IVF{nlist},Flat`` from faiss (saved, loaded and
    searched as one), built several times faster: faiss assigns points with
    its flat-index search, which is slower than BLAS here.
    """
    from .kmeans import assign, spherical_kmeans

    faiss = faiss_module()
    dim, n = _dim(data), _n_rows(data)
    nl = int(choice.nlist)
    train, _ = sample_rows(data, min(n, max(TRAIN_POINTS_PER_LIST * nl, 39 * nl)), metric, block_rows)
    centroids = spherical_kmeans(train, nl, KMEANS_ITERATIONS)
    del train
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, dim, nl, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    for start, block in _blocks(data, metric, block_rows):
        labels = assign(block, centroids)[0]
        index.add_core(len(block), faiss.swig_ptr(block), None, faiss.swig_ptr(labels))
        if progress:
            progress(start + len(block), n)
    return index


def _factory_nlist(index) -> int | None:
    ivf = _as_ivf(index)
    return int(ivf.nlist) if ivf is not None else None


def _as_ivf(index):
    faiss = faiss_module()
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def _as_hnsw(index):
    faiss = faiss_module()
    base = faiss.downcast_index(index)
    return base if hasattr(base, "hnsw") else None


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


# ---------------------------------------------------------------------------
# searching, tuning
# ---------------------------------------------------------------------------
def index_topk(index, queries: np.ndarray, k: int, block_rows: int = DEFAULT_QUERY_BLOCK,
               progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
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
        return sorted({min(limit, int(round(2 ** (i / 2)))) for i in range(0, 62) if 2 ** ((i - 1) / 2) < limit})
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


# ---------------------------------------------------------------------------
# saving, loading
# ---------------------------------------------------------------------------
def save_index(index, path: str | Path, meta: dict) -> Path:
    """Write the index (faiss.write_index) atomically, and ``PATH.json`` describing what it indexes."""
    faiss = faiss_module()
    path = Path(path)
    with atomic_output(path) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_output(Path(str(path) + ".json")) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def load_index(path: str | Path, dim: int, ntotal: int, what: str, meta: dict | None = None):
    """Read an index the user named (faiss index files must be trusted) and check it fits the data.

    Refuses (:class:`MismatchError`) a dimension, row count or metric that
    does not match, and, where ``PATH.json`` exists, a different metric or
    input fingerprint than ``meta``.
    """
    faiss = faiss_module()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such index file (--load-index)")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable faiss index ({str(exc).strip().splitlines()[-1][:120]})") from None
    if index.d != dim:
        raise MismatchError(f"{path}: index has d={index.d} but the {what} needs d={dim}; rebuild it with --save-index")
    if index.ntotal != ntotal:
        raise MismatchError(f"{path}: index holds {index.ntotal} vectors but the {what} has {ntotal} rows; "
                            "rebuild it with --save-index")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise MismatchError(f"{path}: index does not use inner product; rebuild it with nnn --save-index")
    side = Path(str(path) + ".json")
    if meta and side.is_file():
        try:
            saved = json.loads(side.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{side}: not valid JSON; delete it or rebuild the index") from None
        for key, value in meta.items():
            if key in ("side", "metric", "fingerprint", "bias") and key in saved and saved[key] != value:
                raise MismatchError(f"{path}: index was built with {key}={saved[key]!r}, but this run has "
                                    f"{key}={value!r}; rebuild it with --save-index")
    return index


def index_meta(data_fingerprint: str, metric: str, choice: IndexChoice, side: str) -> dict:
    return {"side": side, "metric": metric, "fingerprint": data_fingerprint, "index": choice.describe()}


# ---------------------------------------------------------------------------
# NNN steps with an index
# ---------------------------------------------------------------------------
def stores_exact_vectors(index) -> bool:
    """True when the index scores with the stored float32 vectors (Flat, IVF-Flat, HNSW-Flat)."""
    faiss = faiss_module()
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        base = faiss.downcast_index(base.storage)
    return isinstance(base, (faiss.IndexFlat, faiss.IndexIVFFlat))


def approximate_reference_topk(index, gallery: np.ndarray, reference_exact, k: int,
                               block_rows: int = DEFAULT_QUERY_BLOCK,
                               progress: ProgressFn | None = None,
                               rescore=None) -> tuple[np.ndarray, int]:
    """((N, k) top-k reference scores from ``index``, rows recomputed exactly).

    An IVF-Flat index is probed list by list with GEMM
    (:func:`nnn_cli.listscan.list_major_topk`), the same results as faiss's
    search several times faster.  Rows for which the index returned fewer
    than k results (too few probed lists) are recomputed exactly with
    ``reference_exact(rows) -> (rows, k)``.
    With ``rescore(rows, candidate_ids) -> (rows, k)`` (quantized indexes),
    2k candidates are fetched and re-scored exactly.
    """
    from .listscan import flat_ivf, list_major_topk

    if rescore is None and flat_ivf(index) is not None:
        scores = list_major_topk(index, gallery, k, progress=progress)
        ids = np.where(np.isfinite(scores), 0, -1)
    elif rescore is None:
        scores, ids = index_topk(index, gallery, k, block_rows, progress)
    else:
        ids = index_topk(index, gallery, min(2 * k, index.ntotal), block_rows, progress)[1]
        scores = rescore(gallery, ids)
        ids = np.where(np.isfinite(scores), 0, -1)
    short = np.flatnonzero((ids < 0).any(axis=1))
    if len(short):
        scores[short] = reference_exact(gallery[short])
    return scores, int(len(short))


def rerank_debiased(queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray | None,
                    candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``q . r - b(r)`` for each query's candidate ids; the best ``k``, ties by lower id."""
    valid = candidates >= 0
    safe = np.where(valid, candidates, 0)
    scores = np.einsum("qd,qcd->qc", queries, gallery[safe], optimize=False).astype(np.float32)
    if bias is not None:
        scores -= bias[safe]
    scores[~valid] = -np.inf
    ids = np.where(valid, candidates, np.iinfo(np.int64).max)
    s, i = sort_ties(scores, ids)
    i = np.where(np.isfinite(s), i, -1)
    return s[:, :k], i[:, :k]


def debiased_search(index, queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray | None, k: int,
                    overfetch: int = 1, block_rows: int = 1024,
                    progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by exact debiased score from an index over ``[r, b]`` (or ``r`` when ``bias`` is None).

    The index is searched with ``[q, -1]`` for ``k x overfetch`` candidates,
    which are re-ranked with exact scores from the stored vectors.  When the
    index itself stores float32 vectors and nothing is over-fetched, its
    scores already are the exact ``q . r - b(r)`` (the inner product of the
    augmented vectors), so only ties are re-ordered (by lower id): measured
    on HNSW at N=50k, the re-rank was 15% of the search time.
    """
    debias = bias is not None
    fetch = int(min(index.ntotal, max(k, k * max(1, overfetch))))
    scores_exact = fetch == min(k, index.ntotal) and stores_exact_vectors(index)
    nq = len(queries)
    out_s = np.empty((nq, min(k, index.ntotal)), dtype=np.float32)
    out_i = np.empty_like(out_s, dtype=np.int64)
    for start in range(0, nq, block_rows):
        q = np.ascontiguousarray(queries[start:start + block_rows], dtype=np.float32)
        probe = np.hstack([q, -np.ones((len(q), 1), dtype=np.float32)]) if debias else q
        dist, cand = index.search(probe, fetch)
        if scores_exact:
            missing = cand < 0
            s, i = sort_ties(np.where(missing, -np.inf, dist).astype(np.float32),
                             np.where(missing, np.iinfo(np.int64).max, cand))
            out_s[start:start + len(q)], out_i[start:start + len(q)] = s, np.where(np.isfinite(s), i, -1)
        else:
            out_s[start:start + len(q)], out_i[start:start + len(q)] = rerank_debiased(q, gallery, bias, cand, k)
        if progress:
            progress(min(nq, start + block_rows), nq)
    return out_s, out_i


def exact_debiased_topk(queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray | None, k: int):
    """Exact debiased top-k ids (reference for recall measurements)."""
    from .search import DebiasedIndex

    return DebiasedIndex(gallery, bias).search(queries, k)


def exact_topk_scores(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    return topk_scores(queries, database, k)


@dataclass
class ApproximateRun:
    """What an indexed NNN step did: the index used, tuning and measured recall."""

    choice: IndexChoice
    info: dict

    def to_dict(self) -> dict:
        return {**self.choice.to_dict(), **self.info}


def _apply_depth(index, choice: IndexChoice) -> None:
    set_search_depth(index, nprobe=choice.nprobe, ef_search=choice.ef_search)


def _record_depth(index, choice: IndexChoice) -> None:
    """Copy the depth the index ended up with (given, tuned or loaded) into ``choice``."""
    depth = _current_depth(index)
    choice.nprobe = depth.get("nprobe", choice.nprobe)
    choice.ef_search = depth.get("ef_search", choice.ef_search)


def _current_depth(index) -> dict:
    ivf, hnsw = _as_ivf(index), _as_hnsw(index)
    if ivf is not None:
        return {"nprobe": int(ivf.nprobe)}
    if hnsw is not None:
        return {"ef_search": int(hnsw.hnsw.efSearch)}
    return {}


def _tune_then_save(index, measure, k: int, choice: IndexChoice, save_path: str | Path | None,
                    meta: dict | None, info: dict) -> None:
    """Tune the search depth to ``choice.recall_target`` (if asked), then save the index (if asked).

    Saving comes after tuning, so the file carries the tuned nprobe / efSearch.
    """
    if choice.recall_target is not None and depth_knob(index) is not None:
        tuned = tune_depth(index, measure, k, choice.recall_target)
        info["index_tuned"] = tuned
        if not tuned["reached"]:
            info["index_warning"] = (f"recall target {choice.recall_target} not reached: best "
                                     f"{tuned['recall']:.3f} at {tuned['knob']}={tuned['value']}")
    if save_path is not None:
        save_index(index, save_path, meta or {})
        info["index_saved_to"] = str(save_path)


GALLERY_BLOCK = 524288
"""Gallery rows searched at once by the indexed bias step when the gallery is a file (1 GB at d=512):
only the index and the (N, k) result are held whole.  Large, because list-major probing batches
the rows that probe each list into one GEMM: measured at 200k x 200k, 8 blocks instead of 1
cost 15-30% more time."""


def indexed_reference_topk(gallery, reference, k: int, metric: str, choice: IndexChoice,
                           load_path: str | Path | None = None, save_path: str | Path | None = None,
                           meta: dict | None = None, progress: ProgressFn | None = None,
                           ) -> tuple[np.ndarray, ApproximateRun]:
    """(N, k) top-k reference scores through an index over ``reference`` (array or streamed source).

    Builds (or loads) the index, applies or tunes its search depth on a
    deterministic sample of gallery rows against exact top-k, measures that
    sample's recall and bias error, then searches every gallery row.
    ``gallery`` is an array or a source (streamed in :data:`GALLERY_BLOCK`-row blocks).
    """
    import time

    from .listscan import flat_ivf, list_major_topk
    from .streaming import topk_scores_vs

    info: dict = {}
    t0 = time.perf_counter()
    if load_path is not None:
        index = load_index(load_path, _dim(reference), _n_rows(reference), "reference", meta)
        info["index_loaded_from"] = str(load_path)
    else:
        index = build_index(reference, choice, metric)
    info["index_build_seconds"] = round(time.perf_counter() - t0, 3)
    _apply_depth(index, choice)
    n_gallery = _n_rows(gallery)
    n_sample = min(n_gallery, TUNE_SAMPLE if choice.recall_target else 200)
    sample, _ = sample_rows(gallery, n_sample, metric)
    ivf_flat = flat_ivf(index)
    if ivf_flat is not None:
        # the index holds every reference row as stored float32: probing all lists is exact, with no
        # further pass over the reference file
        exact = list_major_topk(index, sample, k, nprobe=ivf_flat.nlist)
    else:
        exact = topk_scores_vs(sample, reference, k, metric)
    rescore = None
    if not stores_exact_vectors(index):
        # quantized codes give approximate scores: re-score candidates with the float32 reference
        ref_rows = reference.read(metric) if isinstance(reference, EmbeddingSource) else reference
        info["index_rescored_exactly"] = True

        def rescore(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
            out = np.empty((len(rows), k), dtype=np.float32)
            for start in range(0, len(rows), 1024):
                out[start:start + 1024] = rerank_debiased(rows[start:start + 1024], ref_rows, None,
                                                          ids[start:start + 1024], k)[0]
            return out

    def search_sample() -> np.ndarray:
        if rescore is None and ivf_flat is not None:
            return list_major_topk(index, sample, k)
        if rescore is None:
            return index_topk(index, sample, k)[0]
        return rescore(sample, index_topk(index, sample, min(2 * k, index.ntotal))[1])

    def measure() -> float:
        return score_recall(search_sample(), exact)

    _tune_then_save(index, measure, k, choice, save_path, meta, info)
    approx_sample = search_sample()
    info["index_sample_rows"] = int(n_sample)
    info["index_sample_recall"] = round(score_recall(approx_sample, exact), 4)
    approx_mean = np.where(np.isfinite(approx_sample), approx_sample, exact).astype(np.float64).mean(axis=1)
    info["index_sample_mean_abs_topk_mean_error"] = float(np.abs(approx_mean - exact.astype(np.float64).mean(axis=1)).mean())
    _record_depth(index, choice)
    topk = np.empty((n_gallery, min(k, index.ntotal)), dtype=np.float32)
    n_short = 0
    for start, block in _reused_chunks(gallery, metric, GALLERY_BLOCK):
        part_progress = (lambda done, total, s=start: progress(s + done * len(block) // max(total, 1), n_gallery)) \
            if progress else None
        topk[start:start + len(block)], short = approximate_reference_topk(
            index, block, lambda rows: topk_scores_vs(rows, reference, k, metric), k,
            progress=part_progress, rescore=rescore)
        n_short += short
    info["index_rows_recomputed_exactly"] = n_short
    return topk, ApproximateRun(choice, info)


def indexed_search(queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray | None, k: int,
                   choice: IndexChoice, overfetch: int | None = None, load_path: str | Path | None = None,
                   save_path: str | Path | None = None, meta: dict | None = None,
                   progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray, ApproximateRun]:
    """(scores, ids, run): debiased top-k through an index over ``[r, b]``, re-ranked exactly.

    Depth is set or tuned (``choice.recall_target``) on a sample of the
    queries against exact debiased top-k; the sample's recall is recorded.
    """
    import time

    from .search import augment_gallery

    info: dict = {}
    vectors = augment_gallery(gallery, bias) if bias is not None else gallery
    t0 = time.perf_counter()
    if load_path is not None:
        index = load_index(load_path, vectors.shape[1], len(vectors), "gallery" + (" with bias" if bias is not None else ""), meta)
        info["index_loaded_from"] = str(load_path)
    else:
        index = build_index(vectors, choice)
    del vectors
    info["index_build_seconds"] = round(time.perf_counter() - t0, 3)
    _apply_depth(index, choice)
    if overfetch is None:
        # measured (bench_scale.py): with float32 storage, fetching more from the same probed lists / graph
        # walk does not raise recall; quantized codes need spare candidates for the exact re-rank
        overfetch = 1 if stores_exact_vectors(index) else OVERFETCH_QUANTIZED
    info["index_overfetch"] = int(overfetch)
    kk = int(min(k, len(gallery)))
    n_sample = min(len(queries), TUNE_SAMPLE if choice.recall_target else 200)
    sample, _ = sample_rows(queries, n_sample)
    _, exact_ids = exact_debiased_topk(sample, gallery, bias, kk)

    def measure() -> float:
        return topk_recall(debiased_search(index, sample, gallery, bias, kk, overfetch)[1], exact_ids)

    _tune_then_save(index, measure, kk, choice, save_path, meta, info)
    info["index_sample_rows"] = int(n_sample)
    info["index_sample_recall"] = round(measure(), 4)
    _record_depth(index, choice)
    scores, ids = debiased_search(index, queries, gallery, bias, kk, overfetch, progress=progress)
    return scores, ids, ApproximateRun(choice, info)
