"""One leak check: queries (tuning or test) that also sit in the reference set that makes the biases.

A leaked query's own score enters its gallery item's bias, so tuned settings and recall are
optimistic (on sample_data a fully leaked tuning set gave R@1 90.8 against 87.4 clean).  Two tests,
both run whenever they can be:

* **by ids**, when both sides carry ids: a query whose id is a reference id;
* **near-duplicate rows**: a query whose nearest reference row (cosine after L2 normalisation,
  found with the exact top-1 engine of :class:`~nnn_cli.core.search.DebiasedIndex`, blocked) has
  cosine >= 0.999, so the same text re-normalised, re-encoded in float16 or with small noise counts.

Without the reference rows (``nnn eval --bias``) the check uses the **sketch** ``nnn bias`` records
in the bias file (:func:`reference_sketch`): 64-bit hashes of the reference ids, and 512-bit
sign-of-random-projection codes (SimHash, 64 bytes a row) of its rows.  Two rows at cosine c differ
in each bit with probability arccos(c) / pi, and a query counts as a near-duplicate when its nearest
code is within :data:`SKETCH_MAX_BITS` = 14 bits: a copy at cosine 0.9999 (re-normalised, float16,
1e-4 noise) is missed with probability about 1e-8, one at exactly 0.999 with 8e-3; a distinct row at
cosine 0.99 is flagged with probability 0.03, at 0.98 1e-4, at 0.95 1e-10 (the sketch is a screen;
the exact check needs the reference).  A reference of more than :data:`SKETCH_MAX_ROWS` rows keeps
the codes of a seeded sample of that size (64 MB; recorded as ``leak_sketch_rows``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from nnn_cli.core.nnn import check_dims
from nnn_cli.core.search import DebiasedIndex
from nnn_cli.core.topk import DATABASE_TILE, run_parallel, tile_operand, tile_scores
from nnn_cli.errors import ParameterError

NEAR_DUPLICATE_COS = 0.999
"""Cosine at or above which a query counts as a copy of its nearest reference row."""

SKETCH_BITS = 512
SKETCH_MAX_BITS = 14
"""Hamming distance (of SKETCH_BITS) at or below which a query matches a sketched reference row."""

SKETCH_MAX_ROWS = 1_000_000
SKETCH_SEED = 0
EXAMPLES = 5


@dataclass
class LeakReport:
    """What the check found; ``warning`` is the one line to show (None when clean)."""

    what: str
    n_queries: int
    n_leaked: int = 0
    by_ids: int | None = None
    near_duplicates: int = 0
    rows: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    source: str = "reference"

    @property
    def share(self) -> float:
        return self.n_leaked / max(1, self.n_queries)

    @property
    def warning(self) -> str | None:
        if not self.n_leaked:
            return None
        ids = "not compared (ids missing on one side)" if self.by_ids is None else str(self.by_ids)
        via = "" if self.source == "reference" else " (checked against the sketch the bias file records)"
        return (
            f"{self.n_leaked} of {self.n_queries} {self.what} ({100 * self.share:.1f}%) also appear in the reference "
            f"set{via}: {ids} by id, {self.near_duplicates} as near-duplicate rows (cosine >= {NEAR_DUPLICATE_COS}); "
            f"e.g. {', '.join(self.examples)}; their own scores enter the biases, so tuned settings and recall "
            "are optimistic"
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update({"n_duplicates": self.n_leaked, "share": self.share})
        return out

    def raise_if(self, strict: bool) -> LeakReport:
        if strict and self.n_leaked:
            raise ParameterError(f"{self.warning} (--strict)")
        return self


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1).astype(np.float32)


def _report(what, n_queries, id_hits, dup_hits, query_ids, source) -> LeakReport:
    leaked = dup_hits if id_hits is None else dup_hits | id_hits
    rows = np.flatnonzero(leaked)
    names = [str(query_ids[r]) if query_ids is not None else f"row {r}" for r in rows[:EXAMPLES]]
    return LeakReport(
        what, n_queries, int(len(rows)), None if id_hits is None else int(id_hits.sum()), int(dup_hits.sum()),
        rows[:10].tolist(), names, source,
    )  # fmt: skip


def find_leaks(
    queries: np.ndarray,
    reference: np.ndarray | Iterable[np.ndarray],
    query_ids: Sequence | None = None,
    reference_ids: Sequence | None = None,
    what: str = "tuning queries",
    block_rows: int = 1024,
) -> LeakReport:
    """Queries that are in the reference set, by id (when both have ids) and as near-duplicate rows.

    ``reference`` is an array or an iterable of row blocks (a streamed file): each block is searched
    with the exact top-1 engine and the best cosine per query kept, so memory stays at one block.
    """
    id_hits = None
    if query_ids is not None and reference_ids is not None:
        id_hits = np.isin(np.asarray(query_ids).astype(str), np.asarray(reference_ids).astype(str))
    blocks = [reference] if isinstance(reference, np.ndarray) else reference
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    q = _unit(queries)
    for block in blocks:
        check_dims(queries=queries, reference=block)  # the one dimension rule
        if len(block) and len(q):
            scores, _ = DebiasedIndex(_unit(block)).search(q, 1, block_rows)
            np.maximum(best, scores[:, 0], out=best)
    return _report(what, len(queries), id_hits, best >= np.float32(NEAR_DUPLICATE_COS), query_ids, "reference")


# ---------------------------------------------------------------------------
# The sketch a bias file records
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _planes(dim: int) -> np.ndarray:
    """(SKETCH_BITS, dim) the seeded projection as a GEMM operand, made once per dimension (not per block):
    read-only, shared by every call."""
    planes = np.random.default_rng(SKETCH_SEED).standard_normal((dim, SKETCH_BITS)).astype(np.float32)
    operand = tile_operand(planes.T)  # a C-contiguous, aligned copy of the transpose
    operand.flags.writeable = False
    return operand


def sketch_codes(rows: np.ndarray) -> np.ndarray:
    """(N, SKETCH_BITS / 8) uint8 sign-of-random-projection codes (the projection is seeded: same codes anywhere).

    One single-threaded GEMM per :data:`~nnn_cli.core.topk.DATABASE_TILE` rows against the planes, on the
    exact engine's threads, each tile's signs packed where it was computed: the same bits whatever the
    thread count, and measured 1.2-1.7x faster than one multi-threaded GEMM per 65,536 rows."""
    planes = _planes(rows.shape[1])  # (bits, d)
    out = np.empty((len(rows), SKETCH_BITS // 8), dtype=np.uint8)

    def one(start: int) -> None:
        tile = tile_operand(rows[start : start + DATABASE_TILE])
        out[start : start + len(tile)] = np.packbits(tile_scores(tile, planes) > 0, axis=1)

    run_parallel(one, list(range(0, len(rows), DATABASE_TILE)))
    return out


def id_hashes(ids: Iterable) -> np.ndarray:
    """Sorted unique uint64 hashes (blake2b) of ids, for a compact membership test."""
    digests = [hashlib.blake2b(str(i).encode("utf-8"), digest_size=8).digest() for i in ids]
    return np.unique(np.frombuffer(b"".join(digests), dtype="<u8")) if digests else np.zeros(0, dtype="<u8")


def sketch_sample(n_rows: int) -> np.ndarray | None:
    """Sorted rows whose codes are kept when there are more than SKETCH_MAX_ROWS (None: all of them)."""
    if n_rows <= SKETCH_MAX_ROWS:
        return None
    return np.sort(np.random.default_rng(SKETCH_SEED).choice(n_rows, SKETCH_MAX_ROWS, replace=False))


def reference_sketch(reference: np.ndarray, reference_ids: Iterable | None = None) -> dict[str, np.ndarray]:
    """What ``nnn bias`` stores so test queries can be checked later without the reference itself:
    ``codes`` (rows' SimHash codes; a seeded sample when there are more than SKETCH_MAX_ROWS rows) and,
    when the reference has ids, ``id_hashes``."""
    pick = sketch_sample(len(reference))
    out = {"codes": sketch_codes(reference if pick is None else reference[pick])}
    if reference_ids is not None:
        out["id_hashes"] = id_hashes(reference_ids)
    return out


def _min_hamming(codes_q: np.ndarray, codes_r: np.ndarray, block_q: int = 256, block_r: int = 8192) -> np.ndarray:
    best = np.full(len(codes_q), SKETCH_BITS + 1, dtype=np.int64)
    for q0 in range(0, len(codes_q), block_q):
        cq = codes_q[q0 : q0 + block_q, None, :]
        for r0 in range(0, len(codes_r), block_r):
            dist = np.bitwise_count(cq ^ codes_r[None, r0 : r0 + block_r, :]).sum(axis=2, dtype=np.int64)
            np.minimum(best[q0 : q0 + block_q], dist.min(axis=1), out=best[q0 : q0 + block_q])
    return best


def check_against_sketch(
    queries: np.ndarray,
    sketch: Mapping[str, np.ndarray | None],
    query_ids: Sequence | None = None,
    what: str = "test queries",
) -> LeakReport:
    """:func:`find_leaks` against a recorded :func:`reference_sketch` (ids by hash, rows by Hamming distance)."""
    id_hits = None
    if query_ids is not None and sketch.get("id_hashes") is not None:
        id_hits = np.isin(id_hashes_unsorted(query_ids), np.asarray(sketch["id_hashes"]))
    codes = sketch.get("codes")
    if codes is not None and len(codes) and len(queries):
        dup_hits = _min_hamming(sketch_codes(queries), np.asarray(codes, dtype=np.uint8)) <= SKETCH_MAX_BITS
    else:
        dup_hits = np.zeros(len(queries), dtype=bool)
    return _report(what, len(queries), id_hits, dup_hits, query_ids, "sketch")


def id_hashes_unsorted(ids: Iterable) -> np.ndarray:
    """uint64 hashes of ``ids`` in their order (see :func:`id_hashes`)."""
    digests = [hashlib.blake2b(str(i).encode("utf-8"), digest_size=8).digest() for i in ids]
    return np.frombuffer(b"".join(digests), dtype="<u8") if digests else np.zeros(0, dtype="<u8")
