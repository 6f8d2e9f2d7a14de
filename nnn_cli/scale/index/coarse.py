"""The coarse stage of an IVF index at scale: which lists a row goes to (build) or probes (search).

Flat (every centroid scored by one GEMM per tile) below :data:`TWO_LEVEL_MIN_LISTS` lists; above, two
levels: the centroids are grouped once by a small spherical k-means (:data:`GROUPS` ``~ sqrt(nlist)``
super-centroids, derived deterministically from the centroids alone, so the driver and every Ray task
derive the same groups), each row scores the super-centroids, then only the centroids of its
:data:`GROUP_PROBES` best groups.  At 1M x 1M with 1,000 lists that is about a fifth of the flat GEMM,
and the same selection over ~100 candidates instead of 1,000.  The list a row is put in (or the lists it
probes) can then differ from the exact best ones when they sit in a group the row did not pick; the
recall tuning measures the whole path, so that is accounted for.

Probing takes the ``nprobe`` best candidate lists, or with a gap rule (``gap``) every candidate list
whose centroid score is within ``gap`` of the row's best, at most ``nprobe`` of them (``-1`` pads):
rows whose neighbours straddle several lists probe more of them, rows deep inside one list probe one.

Every GEMM is one single-threaded BLAS call on rows of a :data:`COARSE_TILE`-row tile at global
multiples of it (callers pass rows starting at such a boundary), so the result does not depend on the
thread count nor on how rows are split into calls.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np

from nnn_cli.core.topk import run_parallel, single_threaded_blas, tile_operand, tile_scores

TWO_LEVEL_MIN_LISTS = 512
"""From this many lists on, rows are assigned and probed through two levels (below, flat is cheap)."""

GROUP_PROBES = 3
"""Groups of centroids whose members a row scores (the best by super-centroid score)."""

COARSE_TILE = 8192
"""Rows per coarse tile (a multiple of it starts every call's rows: the listscan row grid is one)."""


@dataclass
class Coarse:
    """The centroids (flat) and, for two levels, the groups: ``members[g]`` list ids (ascending) and
    ``group_vectors[g]`` their centroid rows."""

    centroids: np.ndarray
    supers: np.ndarray | None = None
    members: tuple[np.ndarray, ...] = ()
    group_vectors: tuple[np.ndarray, ...] = ()

    @property
    def two_level(self) -> bool:
        return self.supers is not None


_CACHE: dict[str, Coarse] = {}
_CACHE_LOCK = threading.Lock()


def groups_for(nlist: int) -> int:
    return max(2, int(round(np.sqrt(nlist))))


def coarse_for(centroids: np.ndarray) -> Coarse:
    """The coarse stage of these centroids (two levels from :data:`TWO_LEVEL_MIN_LISTS` lists), cached by
    content: building the groups is a k-means over the centroids, done once per process."""
    centroids = tile_operand(np.asarray(centroids, dtype=np.float32))
    if len(centroids) < TWO_LEVEL_MIN_LISTS:
        return Coarse(centroids)
    key = hashlib.blake2b(centroids.tobytes(), digest_size=16).hexdigest()
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    from nnn_cli.core.kmeans import assign, spherical_kmeans

    with single_threaded_blas():  # the same bytes on the driver (many threads) and in a one-thread task
        supers = spherical_kmeans(centroids, groups_for(len(centroids)), 10)
        labels = assign(centroids, supers)[0]
    used = np.flatnonzero(np.bincount(labels, minlength=len(supers)))
    members = tuple(np.flatnonzero(labels == g).astype(np.int64) for g in used)
    coarse = Coarse(
        centroids,
        tile_operand(supers[used]),
        members,
        tuple(tile_operand(centroids[m]) for m in members),
    )
    with _CACHE_LOCK:
        _CACHE.clear()  # one index at a time in practice: keep memory flat
        _CACHE[key] = coarse
    return coarse


def _top_rounds(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, values) (rows, n) of each row's n best columns by repeated argmax (first maximum first);
    ``scores`` is overwritten."""
    rows = np.arange(len(scores))
    pos = np.empty((len(scores), n), dtype=np.int64)
    val = np.empty((len(scores), n), dtype=np.float32)
    for j in range(n):
        best = scores.argmax(axis=1)
        pos[:, j] = best
        val[:, j] = scores[rows, best]
        scores[rows, best] = -np.inf
    return pos, val


def _score_blocks(coarse: Coarse, q: np.ndarray, flat: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[(rows, list ids, scores (rows, lists))]: each row's candidate lists scored, one GEMM per group."""
    if flat or not coarse.two_level:
        return [(np.arange(len(q)), np.arange(len(coarse.centroids)), tile_scores(q, coarse.centroids))]
    assert coarse.supers is not None
    n_groups = min(GROUP_PROBES, len(coarse.members))
    groups, _ = _top_rounds(tile_scores(q, coarse.supers), n_groups)
    flat_groups = groups.ravel()
    order = np.argsort(flat_groups, kind="stable")
    cuts = np.flatnonzero(np.diff(flat_groups[order])) + 1
    out = []
    for part in np.split(order, cuts):
        g = int(flat_groups[part[0]])
        rows = part // n_groups  # ascending, each row once (a row picks a group once)
        out.append((rows, coarse.members[g], tile_scores(tile_operand(q[rows], copy=True), coarse.group_vectors[g])))
    return out


def _within_gap(coarse: Coarse, q: np.ndarray, take: int, gap: float, flat: bool) -> tuple[np.ndarray, np.ndarray]:
    """The gap rule on a tile: every candidate list within ``gap`` of the row's best, best first (ties: the
    lower list), at most ``take``; two passes over the candidates' scores and a sort of the few kept."""
    blocks = _score_blocks(coarse, q, flat)
    best = np.full(len(q), -np.inf, dtype=np.float32)
    for rows, _, sc in blocks:
        best[rows] = np.maximum(best[rows], sc.max(axis=1))
    floor = best - np.float32(gap)
    kept_rows, kept_ids, kept_vals = [], [], []
    for rows, ids, sc in blocks:
        r, c = np.nonzero(sc >= floor[rows, None])
        kept_rows.append(rows[r])
        kept_ids.append(ids[c])
        kept_vals.append(sc[r, c])
    r, lid, v = np.concatenate(kept_rows), np.concatenate(kept_ids), np.concatenate(kept_vals)
    order = np.lexsort((lid, -v, r))
    r, lid, v = r[order], lid[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)
    sel = rank < take
    ids_out = np.full((len(q), take), -1, dtype=np.int64)
    vals_out = np.full((len(q), take), -np.inf, dtype=np.float32)
    ids_out[r[sel], rank[sel]] = lid[sel]
    vals_out[r[sel], rank[sel]] = v[sel]
    return ids_out, vals_out


def _candidates(coarse: Coarse, q: np.ndarray, flat: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores (t, c), list ids (t, c) or None meaning column = list) of each row's candidate lists."""
    if flat or not coarse.two_level:
        return tile_scores(q, coarse.centroids), None
    assert coarse.supers is not None
    n_groups = min(GROUP_PROBES, len(coarse.members))
    groups, _ = _top_rounds(tile_scores(q, coarse.supers), n_groups)
    width = max(len(m) for m in coarse.members)
    scores = np.full((len(q), n_groups, width), -np.inf, dtype=np.float32)
    ids = np.full((len(q), n_groups, width), -1, dtype=np.int64)
    order = np.argsort(groups.ravel(), kind="stable")
    flat_groups = groups.ravel()[order]
    cuts = np.flatnonzero(np.diff(flat_groups)) + 1
    for part in np.split(order, cuts):
        g = int(groups.ravel()[part[0]])
        rows, slots = part // n_groups, part % n_groups
        sub = tile_operand(q[rows], copy=True)
        m = len(coarse.members[g])
        scores[rows, slots, :m] = tile_scores(sub, coarse.group_vectors[g])
        ids[rows, slots, :m] = coarse.members[g]
    return scores.reshape(len(q), -1), ids.reshape(len(q), -1)


def _probe_tile(
    coarse: Coarse, q: np.ndarray, nprobe: int, gap: float | None, flat: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(list ids, centroid scores) (t, <= nprobe) of a tile's rows, best first, ``-1`` / ``-inf`` padding."""
    if gap is not None or nprobe == 1:  # the gap rule (gap 0: the best list, as a row is assigned)
        return _within_gap(coarse, q, nprobe, 0.0 if gap is None else gap, flat)
    scores, ids = _candidates(coarse, q, flat)
    pos, val = _top_rounds(scores, min(nprobe, scores.shape[1]))
    out = pos if ids is None else np.take_along_axis(ids, np.maximum(pos, 0), axis=1)
    out = np.where((pos >= 0) & np.isfinite(val), out, -1)
    return out, val


def probe(
    coarse: Coarse, queries: np.ndarray, nprobe: int, gap: float | None = None, flat: bool = False, trim: bool = False
) -> np.ndarray:
    """(Q, nprobe) int64 list ids each row probes, best first; ``-1`` pads (gap rule, or too few lists).
    ``flat``: every centroid is a candidate, even with two levels (when the groups a row scores cannot
    reach a recall target).  See :func:`probe_scored`."""
    return probe_scored(coarse, queries, nprobe, gap, flat, trim)[0]


def probe_scored(
    coarse: Coarse,
    queries: np.ndarray,
    nprobe: int,
    gap: float | None = None,
    flat: bool = False,
    trim: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(list ids, centroid scores) (Q, nprobe) of :func:`probe` (``-1`` / ``-inf`` pads).

    ``queries`` start at a global multiple of :data:`COARSE_TILE`; the tiles are dealt to the engine's
    threads, one single-threaded GEMM each (the same bytes whatever the thread count).  ``trim``: only as
    many columns as some row uses (under the gap rule a few, not ``nprobe``: at 1M rows and at most 64
    probes the untrimmed arrays would take 768 MB).
    """
    nprobe = int(max(1, min(nprobe, len(coarse.centroids))))
    starts = list(range(0, len(queries), COARSE_TILE))
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def one(start: int) -> None:
        q = tile_operand(queries[start : start + COARSE_TILE], copy=True)
        got, val = _probe_tile(coarse, q, nprobe, gap, flat)
        used = int((got >= 0).sum(axis=1).max(initial=1)) if trim else got.shape[1]
        parts[start] = (got[:, :used].copy(), val[:, :used].copy())

    run_parallel(one, starts)
    width = max((parts[s][0].shape[1] for s in starts), default=1) if trim else nprobe
    out = np.full((len(queries), width), -1, dtype=np.int64)
    vals = np.full((len(queries), width), -np.inf, dtype=np.float32)
    for start in starts:
        got, val = parts.pop(start)
        out[start : start + len(got), : got.shape[1]] = got
        vals[start : start + len(got), : got.shape[1]] = val
    return out, vals


def probe_pairs(
    coarse: Coarse, queries: np.ndarray, nprobe: int, gap: float | None = None, flat: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The probes of :func:`probe` as (rows int64, lists int32) pairs, by row then rank: memory follows the
    probes made, not the most a row may make (for the list-major scan)."""
    nprobe = int(max(1, min(nprobe, len(coarse.centroids))))
    starts = list(range(0, len(queries), COARSE_TILE))
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def one(start: int) -> None:
        q = tile_operand(queries[start : start + COARSE_TILE], copy=True)
        got, _ = _probe_tile(coarse, q, nprobe, gap, flat)
        r, c = np.nonzero(got >= 0)
        parts[start] = (start + r.astype(np.int64), got[r, c].astype(np.int32))

    run_parallel(one, starts)
    if not starts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int32)
    return np.concatenate([parts[s][0] for s in starts]), np.concatenate([parts[s][1] for s in starts])


def assign_lists(coarse: Coarse, rows: np.ndarray) -> np.ndarray:
    """(n,) int64: the list each row is put in (its best candidate list; ``rows`` start on the tile grid)."""
    return probe(coarse, rows, 1)[:, 0]
