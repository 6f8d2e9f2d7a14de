"""Both NNN steps through an index.

- Reference side (``nnn bias --index``): each gallery item's top-k reference
  scores from an index over the reference queries (IVF-Flat probed list by
  list with GEMM, :mod:`nnn_cli.scale.index.listscan`).
- Gallery side (``nnn search --index``): an index over the augmented gallery
  ``[r, b]`` searched with ``[q, -1]``; candidates re-ranked by their exact
  debiased score (see :func:`debiased_search`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, QUERY_TILE, ProgressFn, sort_ties
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.scale.device import faiss_module
from nnn_cli.scale.index.build import (
    _as_hnsw,
    _as_ivf,
    _dim,
    _n_rows,
    _reused_chunks,
    build_index,
    load_index,
    sample_rows,
    save_index,
)
from nnn_cli.scale.index.choose import OVERFETCH_QUANTIZED, TUNE_SAMPLE, IndexChoice
from nnn_cli.scale.index.depth import (
    MAX_PROBES,
    RECALL_CONFIDENCE_Z,
    choose_gap,
    depth_knob,
    index_topk,
    score_floor,
    score_recall,
    set_search_depth,
    topk_recall,
    tune_depth,
)


def stores_exact_vectors(index) -> bool:
    """True when the index scores with the stored float32 vectors (Flat, IVF-Flat, HNSW-Flat)."""
    faiss = faiss_module()
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        base = faiss.downcast_index(base.storage)
    return isinstance(base, (faiss.IndexFlat, faiss.IndexIVFFlat))


def approximate_reference_topk(
    index,
    gallery: np.ndarray,
    reference_exact,
    k: int,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
    rescore=None,
    probing: dict | None = None,
) -> tuple[np.ndarray, int]:
    """((N, k) top-k reference scores from ``index``, rows recomputed exactly).

    An IVF-Flat index is probed list by list with GEMM
    (:func:`nnn_cli.scale.index.listscan.list_major_topk`), the same results as faiss's
    search several times faster.  Rows for which the index returned fewer
    than k results (too few probed lists) are recomputed exactly with
    ``reference_exact(rows) -> (rows, k)``.
    With ``rescore(rows, candidate_ids) -> (rows, k)`` (quantized indexes),
    2k candidates are fetched and re-scored exactly.  ``probing`` (:func:`probe_rule`) sets an IVF-Flat
    index's probe gap and most probes.
    """
    from nnn_cli.scale.index.listscan import flat_ivf, list_major_topk

    if rescore is None and flat_ivf(index) is not None:
        scores = list_major_topk(index, gallery, k, progress=progress, **(probing or {}))
        ids = np.where(np.isfinite(scores), 0, -1)
    elif rescore is None:
        scores, ids = index_topk(index, gallery, k, block_rows, progress)
    else:
        ids = index_topk(index, gallery, min(2 * k, index.ntotal), block_rows, progress)[1]
        scores = rescore(gallery, ids)
        ids = np.where(np.isfinite(scores), 0, -1)
    short = np.flatnonzero((ids < 0).any(axis=1))
    if len(short):
        scores[short] = reference_exact(gallery[short], exact_groups(short, index))
    return scores, int(len(short))


def exact_groups(short: np.ndarray, index) -> list[int]:
    """The row counts of ``short`` (sorted positions in a block that starts on the row grid) per block of the
    grid every engine aligns its blocks to (:data:`~nnn_cli.scale.index.listscan.LIST_ROW_BLOCK`, or
    :data:`~nnn_cli.core.topk.QUERY_TILE` for HNSW): each group is tiled on its own when recomputed exactly,
    so a row's bytes depend on its grid block's short rows only, not on how the gallery was cut into calls
    (a local chunk of 524,288 rows, a Ray block of 65,536).  Measured: the exact engine's bytes for a row
    depend on the other rows of its GEMM (their count and its place), so grouping them by call gave 23 of
    1M rows differing in the last bits between two chunk sizes."""
    from nnn_cli.scale.index.build import _as_hnsw
    from nnn_cli.scale.index.listscan import LIST_ROW_BLOCK

    grid = QUERY_TILE if _as_hnsw(index) is not None else LIST_ROW_BLOCK
    cells = np.asarray(short) // grid
    return np.unique(cells, return_counts=True)[1].tolist()


def rerank_debiased(
    queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray | None, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
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


def debiased_search(
    index,
    queries: np.ndarray,
    gallery: np.ndarray,
    bias: np.ndarray | None,
    k: int,
    overfetch: int = 1,
    block_rows: int = 1024,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
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
        q = np.ascontiguousarray(queries[start : start + block_rows], dtype=np.float32)
        probe = np.hstack([q, -np.ones((len(q), 1), dtype=np.float32)]) if debias else q
        dist, cand = index.search(probe, fetch)
        if scores_exact:
            missing = cand < 0
            s, i = sort_ties(
                np.where(missing, -np.inf, dist).astype(np.float32), np.where(missing, np.iinfo(np.int64).max, cand)
            )
            out_s[start : start + len(q)], out_i[start : start + len(q)] = s, np.where(np.isfinite(s), i, -1)
        else:
            out_s[start : start + len(q)], out_i[start : start + len(q)] = rerank_debiased(q, gallery, bias, cand, k)
        if progress:
            progress(min(nq, start + block_rows), nq)
    return out_s, out_i


def exact_debiased_topk(queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray | None, k: int):
    """Exact debiased top-k ids (reference for recall measurements)."""
    from nnn_cli.core.search import DebiasedIndex

    return DebiasedIndex(gallery, bias).search(queries, k)


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


def _tune_then_save(
    index,
    measure,
    k: int,
    choice: IndexChoice,
    save_path: str | Path | None,
    meta: dict | None,
    info: dict,
    tune: bool = True,
) -> None:
    """Tune the search depth to ``choice.recall_target`` (if asked), then save the index (if asked).

    Saving comes after tuning, so the file carries the tuned nprobe / efSearch.
    """
    if tune and choice.recall_target is not None and depth_knob(index) is not None:
        tuned = tune_depth(index, measure, k, choice.recall_target)
        info["index_tuned"] = tuned
        if not tuned["reached"]:
            info["index_warning"] = (
                f"recall target {choice.recall_target} not reached: best "
                f"{tuned['recall']:.3f} at {tuned['knob']}={tuned['value']}"
            )
    if save_path is not None:
        save_index(index, save_path, meta or {})
        info["index_saved_to"] = str(save_path)


GALLERY_BLOCK = 524288
"""Gallery rows searched at once by the indexed bias step when the gallery is a file (1 GB at d=512):
only the index and the (N, k) result are held whole.  Large, because list-major probing batches
the rows that probe each list into one GEMM: measured at 200k x 200k, 8 blocks instead of 1
cost 15-30% more time."""


def indexed_reference_topk(
    gallery,
    reference,
    k: int,
    metric: str,
    choice: IndexChoice,
    load_path: str | Path | None = None,
    save_path: str | Path | None = None,
    meta: dict | None = None,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, ApproximateRun]:
    """(N, k) top-k reference scores through an index over ``reference`` (array or streamed source).

    Builds (or loads) the index, applies or tunes its search depth on a
    deterministic sample of gallery rows against exact top-k, measures that
    sample's recall and bias error, then searches every gallery row.
    ``gallery`` is an array or a source (streamed in :data:`GALLERY_BLOCK`-row blocks).
    """
    from nnn_cli.scale.streaming import topk_scores_vs

    index, rescore, info = prepare_reference_index(gallery, reference, k, metric, choice, load_path, save_path, meta)
    n_gallery = _n_rows(gallery)
    topk = np.empty((n_gallery, min(k, index.ntotal)), dtype=np.float32)
    n_short = 0
    # no hash on the way: the gallery's is wanted only by a bias file's provenance, which takes it beside
    # the leak sketch at commit, while here every core waits on the serial fill
    for start, block in _reused_chunks(gallery, metric, GALLERY_BLOCK, fingerprint=False):
        part_progress = (
            (lambda done, total, s=start, m=len(block): progress(s + done * m // max(total, 1), n_gallery))
            if progress
            else None
        )
        topk[start : start + len(block)], short = approximate_reference_topk(
            index,
            block,
            lambda rows, groups: topk_scores_vs(rows, reference, k, metric, groups),
            k,
            progress=part_progress,
            rescore=rescore,
            probing=probe_rule(choice),
        )
        n_short += short
    info["index_rows_recomputed_exactly"] = n_short
    return topk, ApproximateRun(choice, info)


def prepare_reference_index(
    gallery,
    reference,
    k: int,
    metric: str,
    choice: IndexChoice,
    load_path: str | Path | None = None,
    save_path: str | Path | None = None,
    meta: dict | None = None,
):
    """(index, rescore, info): the reference index built (or loaded), its depth set or tuned on a
    deterministic gallery sample, the sample's recall measured; ``choice`` gets the depth used.

    The first half of :func:`indexed_reference_topk`, shared with ``--engine ray`` (which builds on
    the driver and ships the index to tasks).  ``rescore`` is None unless the index stores quantized codes.
    """
    import time

    from nnn_cli.scale.index.listscan import _flat_centroids, flat_ivf, list_major_topk, order_lists_by_centroid
    from nnn_cli.scale.streaming import topk_scores_vs

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
    ivf_flat = flat_ivf(index)
    if ivf_flat is not None and choice.recall_target is not None:
        info["index_lists_reordered"] = order_lists_by_centroid(ivf_flat)  # list heads first: see PROBE_PREFIXES
    tune_rows = GAP_TUNE_SAMPLE if ivf_flat is not None else TUNE_SAMPLE
    n_sample = min(n_gallery, tune_rows if choice.recall_target else 200)
    sample, _ = sample_rows(gallery, n_sample, metric)
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
                out[start : start + 1024] = rerank_debiased(
                    rows[start : start + 1024], ref_rows, None, ids[start : start + 1024], k
                )[0]
            return out

    def search_sample() -> np.ndarray:
        if rescore is None and ivf_flat is not None:
            return list_major_topk(index, sample, k, **probe_rule(choice, index))
        if rescore is None:
            return index_topk(index, sample, k)[0]
        return rescore(sample, index_topk(index, sample, min(2 * k, index.ntotal))[1])

    def measure() -> float:
        return score_recall(search_sample(), exact)

    gap_rule = ivf_flat is not None and choice.recall_target is not None and _flat_centroids(ivf_flat) is not None
    if gap_rule:
        gap_rule = _tune_gap(ivf_flat, sample, exact, k, choice, info, measure)
    _tune_then_save(index, measure, k, choice, save_path, meta, info, tune=not gap_rule)
    approx_sample = search_sample()
    info["index_sample_rows"] = int(n_sample)
    info["index_sample_recall"] = round(score_recall(approx_sample, exact), 4)
    approx_mean = np.where(np.isfinite(approx_sample), approx_sample, exact).astype(np.float64).mean(axis=1)
    info["index_sample_mean_abs_topk_mean_error"] = float(
        np.abs(approx_mean - exact.astype(np.float64).mean(axis=1)).mean()
    )
    _record_depth(index, choice)
    return index, rescore, info


GAP_TUNE_SAMPLE = 500
"""Gallery rows of the sample an IVF-Flat probe gap is tuned on: their exact top-k (every list scanned)
costs ``rows / N`` of the exact bias, 1/2,000 at 1M rows; the recall target is met with a standard-error lower
confidence bound (:data:`~nnn_cli.scale.index.depth.RECALL_CONFIDENCE_Z`), so a smaller sample costs a
slightly larger margin, not the promise."""


def probe_rule(choice: IndexChoice, index=None) -> dict:
    """Keyword arguments of :func:`~nnn_cli.scale.index.listscan.list_major_topk` for the probing ``choice``
    settled on: ``{"nprobe", "gap"}`` under a tuned gap rule, else the index's own nprobe."""
    if choice.probe_gap is not None and choice.probe_max is not None:
        return {
            "nprobe": int(choice.probe_max),
            "gap": float(choice.probe_gap),
            "flat": bool(choice.probe_flat),
            "prefix": choice.probe_prefix,
        }
    return {}


PROBE_PREFIXES = (1.0, 0.9, 0.8, 0.75, 0.7, 0.65, 0.6)
"""List prefixes the probe gap is tuned with (lists ordered by centroid score, heads first: see
:func:`~nnn_cli.scale.index.listscan.order_lists_by_centroid`): for each, the smallest gap reaching the recall
target, and the pair scanning the fewest vectors per sample row wins.  Measured at 1M x 1M (d=512, clustered,
1,000 lists, 2,000 rows): scores per row at recall 0.95 fell from 4,762 (whole lists) to 3,867 with 80% of
each list and 3,658 with 75%, while an oracle picking whole lists by hits per score needed 4,313."""


def _tune_gap(ivf, sample: np.ndarray, exact: np.ndarray, k: int, choice: IndexChoice, info: dict, measure) -> bool:
    """Tune the probe gap of an IVF-Flat index to ``choice.recall_target`` on the sample (exact top-k known):
    each sample row's :data:`MAX_PROBES` best lists, how many of its exact top-k each holds (within each of
    the :data:`PROBE_PREFIXES` of the list), then per prefix the smallest gap whose recall's lower bound
    (:data:`~nnn_cli.scale.index.depth.RECALL_CONFIDENCE_Z` standard errors) reaches the target
    (:func:`choose_gap`), and of those the (prefix, gap) scanning the fewest vectors a row.  The index's own
    nprobe is set to the smallest fixed depth reaching the target on the sample (what a saved index, or
    faiss, then uses).  The gap found is checked by running it; the recall measured is what is reported.
    False (nothing set) when even :data:`MAX_PROBES` lists cannot reach the target: the caller then tunes a
    fixed nprobe over every depth."""
    from nnn_cli.scale.index.coarse import coarse_for, probe_scored
    from nnn_cli.scale.index.listscan import _flat_centroids, list_hits_by_prefix, prefix_length

    target = float(choice.recall_target)  # type: ignore[arg-type]
    centroids = _flat_centroids(ivf)
    assert centroids is not None  # the caller checked: a flat coarse quantizer
    most = int(min(ivf.nlist, MAX_PROBES))
    floor = score_floor(exact)
    sizes = np.array([ivf.invlists.list_size(lst) for lst in range(ivf.nlist)] + [0], dtype=np.int64)
    for flat in (False, True):  # two levels first; every centroid if their groups cannot reach the target
        probes, scores = probe_scored(coarse_for(centroids), sample, most, flat=flat)
        by_prefix = list_hits_by_prefix(ivf, sample, probes, floor, PROBE_PREFIXES)
        gaps = (scores[:, :1] - scores).astype(np.float64)
        picked, cost, prefix = None, np.inf, 1.0
        for fraction, hits in zip(PROBE_PREFIXES, by_prefix):
            found = choose_gap(gaps, hits, k, target)
            scanned = np.array([prefix_length(size, fraction) for size in sizes])[probes]  # -1 probes: size 0
            mean_scanned = float(np.where(gaps <= found["gap"], scanned, 0).sum(axis=1).mean())
            if found["reached"] and mean_scanned < cost:
                picked, cost, prefix = found, mean_scanned, fraction
        if picked is not None or not coarse_for(centroids).two_level:
            break
    if picked is None:
        return False
    hits = by_prefix[0]  # whole lists: what faiss's own search of the index scans
    fixed = np.minimum(np.cumsum(hits, axis=1), k).mean(axis=0) / k
    reach = np.flatnonzero(fixed >= target)
    ivf.nprobe = int(reach[0] + 1) if len(reach) else most
    choice.probe_max, choice.probe_gap, choice.probe_flat = most, picked["gap"], flat
    choice.probe_prefix = prefix if prefix < 1 else None
    recall = measure()
    info["index_tuned"] = {
        "knob": "probe_gap",
        "value": picked["gap"],
        "max_probes": most,
        "recall": float(recall),
        "predicted_recall": round(picked["predicted_recall"], 4),
        "lower_bound": round(picked["lower_bound"], 4),
        "confidence_z": RECALL_CONFIDENCE_Z,
        "mean_probes": round(float((gaps <= picked["gap"]).sum(axis=1).mean()), 3),
        "fixed_nprobe_equivalent": int(ivf.nprobe),
        "every_centroid_scored": bool(flat),
        "list_prefix": prefix,
        "mean_vectors_scanned": round(cost, 1),
        "reached": bool(recall >= target),
    }
    if not info["index_tuned"]["reached"]:
        info["index_warning"] = f"recall target {target} not reached: {recall:.3f} on the sample with the probe gap"
    return True


def indexed_search(
    queries: np.ndarray,
    gallery: np.ndarray,
    bias: np.ndarray | None,
    k: int,
    choice: IndexChoice,
    overfetch: int | None = None,
    load_path: str | Path | None = None,
    save_path: str | Path | None = None,
    meta: dict | None = None,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray, ApproximateRun]:
    """(scores, ids, run): debiased top-k through an index over ``[r, b]``, re-ranked exactly.

    Depth is set or tuned (``choice.recall_target``) on a sample of the
    queries against exact debiased top-k; the sample's recall is recorded.
    """
    import time

    from nnn_cli.core.search import augment_gallery

    info: dict = {}
    vectors = augment_gallery(gallery, bias) if bias is not None else gallery
    t0 = time.perf_counter()
    if load_path is not None:
        index = load_index(
            load_path, vectors.shape[1], len(vectors), "gallery" + (" with bias" if bias is not None else ""), meta
        )
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
