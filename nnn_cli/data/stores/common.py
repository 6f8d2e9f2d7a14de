"""What every vector store shares: masked URIs, the store source, the ``[r, b]`` rows and their
MIPS-to-L2 form, and the :class:`VectorStore` interface the jobs talk to (no job knows which store
it has).

A store is a *source* (``scan_keys`` then ``scan``: keys and float32 rows by blocks, a pipeline source through
:mod:`nnn_cli.data.stores.source`) and a *sink* (``write_table`` for export, ``bias_writer`` for in-place
biases), each commit atomic in the store's own terms; the parameters and fingerprints of the run are kept in the store (``read_meta``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from nnn_cli.errors import InputError, ParameterError

BIAS_COLUMN = "nnn_bias"
VECTOR_COLUMN = "nnn_vector"
TOPK_COLUMN = "nnn_topk"
ROW_COLUMN = "nnn_row"
STORE_METRICS = ("ip", "l2")
INDEX_KINDS = ("none", "hnsw", "ivf")
DEFAULT_IO_TIMEOUT = 30.0
IO_TIMEOUT_ENV = "NNN_IO_TIMEOUT"
_SECRET_KEYS = {"password", "passwd", "api_key", "apikey", "token", "secret", "aws_secret_access_key", "sslpassword"}


def resolve_io_timeout(io_timeout: float | None) -> float:
    """``--io-timeout``, else ``NNN_IO_TIMEOUT``, else 30 s (as for object stores); must be > 0."""
    if io_timeout is None:
        text = os.environ.get(IO_TIMEOUT_ENV, "")
        try:
            io_timeout = float(text) if text.strip() else DEFAULT_IO_TIMEOUT
        except ValueError:
            raise ParameterError(f"{IO_TIMEOUT_ENV}={text!r}: not a number of seconds") from None
    if not io_timeout > 0:
        raise ParameterError(f"--io-timeout must be > 0 seconds, got {io_timeout:g}")
    return float(io_timeout)


def mask_uri(uri: str) -> str:
    """``uri`` with its password (``user:***@``) and secret query parameters masked."""
    text = str(uri)
    prefix = ""
    for scheme in ("lancedb:", "qdrant:"):
        if text.startswith(scheme) and not text.startswith(scheme + "//"):
            prefix, text = scheme, text[len(scheme) :]
    if "://" not in text:
        return prefix + text
    try:
        parts = urlsplit(text)
    except ValueError:
        return prefix + re.sub(r"//[^@/]*@", "//***@", text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in pairs], safe="/:*")
    return prefix + urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def uri_secrets(uri: str) -> list[str]:
    """The secrets in ``uri`` (password, secret parameters), to scrub from a driver's messages."""
    text = str(uri).split(":", 1)[1] if str(uri).startswith(("lancedb:", "qdrant:")) else str(uri)
    out: list[str] = []
    if "://" not in text:
        return out
    with contextlib.suppress(ValueError):
        parts = urlsplit(text)
        if parts.password:
            out.append(parts.password)
        out.extend(v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_KEYS and v)
    return [s for s in out if s]


def scrub(message: str, secrets: list[str]) -> str:
    """One line of a driver's message, secrets replaced by ``***``."""
    text = " ".join(str(message).split())
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def check_unique(name: str, ids: list | np.ndarray) -> None:
    """Refuse duplicate row keys (a bias could not be written back to one row)."""
    keys = np.asarray([str(v) for v in ids], dtype=object)
    if len(set(keys.tolist())) != len(keys):
        _, first, counts = np.unique(keys.astype(str), return_index=True, return_counts=True)
        dup = keys[first[np.argmax(counts > 1)]]
        raise InputError(f"{name}: id {dup!s} appears more than once; ids must be unique")


def align_topk(name: str, keys: list, values: list | np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The stored ``nnn_topk`` rows (``keys[i]`` -> ``values[i]``) in the order of ``ids``, (N, k) float32;
    refuses rows without one (biased before top-k were kept, or not biased yet)."""
    key_arr = np.asarray([str(v) for v in keys])
    want = np.asarray([str(v) for v in ids])
    order = np.argsort(key_arr, kind="stable")
    pos = np.searchsorted(key_arr[order], want)
    pos = np.minimum(pos, max(0, len(key_arr) - 1))
    found = (len(key_arr) > 0) & (key_arr[order][pos] == want) if len(key_arr) else np.zeros(len(want), dtype=bool)
    rows = order[pos]
    missing = ~found
    if not missing.any():
        picked = [values[i] for i in rows.tolist()]
        missing = np.asarray([v is None or len(v) != k for v in picked], dtype=bool)
    if missing.any():
        key = want[int(np.argmax(missing))]
        raise InputError(
            f"{name}: row {key} has no stored top-{k} ({TOPK_COLUMN}); run nnn bias --in-place (or --only-new) first"
        )
    return np.asarray(picked, dtype=np.float32).reshape(len(want), k)


def nnn_rows(vectors: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``[r, b]`` (N, d+1) float32: with the query ``[q, -1]`` the inner product is ``s(q, r) - b(r)``."""
    out = np.empty((vectors.shape[0], vectors.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = vectors
    out[:, -1] = bias
    return out


def l2_rows(rows: np.ndarray, max_norm: float | None = None) -> tuple[np.ndarray, float]:
    """The MIPS-to-L2 reduction: ``[x, sqrt(M^2 - |x|^2)]`` with ``M = max |x|`` (or ``max_norm``), so every
    row has norm M and ``|y - [q', 0]|^2 = M^2 + |q'|^2 - 2 <x, q'>``: the L2 ranking is the inner-product
    ranking.  Returns the rows (N, D+1) and M."""
    sq = np.einsum("ij,ij->i", rows.astype(np.float64), rows.astype(np.float64))
    m = float(math.sqrt(sq.max())) if max_norm is None else float(max_norm)
    if max_norm is not None and sq.max() > m * m * (1 + 1e-6):
        raise ParameterError(
            f"a new row's norm {math.sqrt(sq.max()):.6g} exceeds the table's L2 bound {m:.6g}: "
            "rewrite the table with --replace"
        )
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = rows
    out[:, -1] = np.sqrt(np.maximum(m * m - sq, 0.0))
    return out, m


def query_rows(queries: np.ndarray, store_metric: str) -> np.ndarray:
    """``[q, -1]`` (ip) or ``[q, -1, 0]`` (l2) float32."""
    extra = 1 if store_metric == "ip" else 2
    out = np.zeros((queries.shape[0], queries.shape[1] + extra), dtype=np.float32)
    out[:, : queries.shape[1]] = queries
    out[:, queries.shape[1]] = -1.0
    return out


def score_from_l2(dist: np.ndarray, queries_aug: np.ndarray, max_norm: float) -> np.ndarray:
    """The debiased score from an L2 distance under the reduction: ``(M^2 + |q'|^2 - dist^2) / 2``."""
    qn = np.einsum("ij,ij->i", queries_aug.astype(np.float64), queries_aug.astype(np.float64))
    return ((max_norm * max_norm + qn[:, None] - dist.astype(np.float64) ** 2) / 2).astype(np.float32)


def check_store_metric(metric: str) -> str:
    if metric == "cosine":
        raise ParameterError(
            "--store-metric cosine cannot serve NNN: cosine renormalises [r, b], which changes the bias "
            "each item gets; use ip (inner product) or l2"
        )
    if metric not in STORE_METRICS:
        raise ParameterError(f"unknown --store-metric {metric!r}: use ip or l2")
    return metric


def check_index_kind(index: str) -> str:
    if index not in INDEX_KINDS:
        raise ParameterError(f"unknown --index {index!r} for a store: use none, hnsw or ivf")
    return index


@dataclass
class StoreHits:
    """A store's answer to a batch of queries: ids (Q, k) strings, row numbers (Q, k; -1 where the table
    keeps none) and debiased scores (Q, k), best first."""

    ids: np.ndarray
    rows: np.ndarray
    scores: np.ndarray


MAX_EF_SEARCH = 100_000


@dataclass(frozen=True)
class SearchEffort:
    """How hard a store's ANN index searches (``--ef-search N``, ``--exact``); the default is the store's own.

    ``ef_search``: pgvector ``hnsw.ef_search`` (at least the top-k asked for, at most 1000) and
    ``ivfflat.probes``, set with ``SET LOCAL`` in the search's transaction; LanceDB ``nprobes``, ``ef`` and
    ``refine_factor``;
    Qdrant ``SearchParams(hnsw_ef=N)``.  ``exact``: the store scans every row (pgvector: index scans off in
    the transaction; LanceDB: ``bypass_vector_index``; Qdrant: ``exact=True``)."""

    ef_search: int | None = None
    exact: bool = False

    def to_json(self) -> dict:
        return {"ef_search": self.ef_search, "exact": self.exact}


def search_effort(ef_search: int | None = None, exact: bool = False) -> SearchEffort:
    """A checked :class:`SearchEffort` (one-line :class:`ParameterError` for a bad value or combination)."""
    if ef_search is not None:
        if isinstance(ef_search, bool) or not isinstance(ef_search, (int, np.integer)):
            raise ParameterError(f"--ef-search must be a whole number, got {ef_search!r}")
        if not 1 <= int(ef_search) <= MAX_EF_SEARCH:
            raise ParameterError(f"--ef-search must be between 1 and {MAX_EF_SEARCH}, got {ef_search}")
        if exact:
            raise ParameterError("--exact scans every row without the index: drop --ef-search (or --exact)")
    return SearchEffort(None if ef_search is None else int(ef_search), bool(exact))


@dataclass
class WriteSpec:
    """What an export writes: ids, the plain vectors, biases, ``[r, b]`` (or its L2 form), extra columns."""

    ids: np.ndarray
    vectors: np.ndarray
    bias: np.ndarray
    nnn_vectors: np.ndarray
    row_offset: int = 0
    columns: dict[str, list] = field(default_factory=dict)


class BiasWriter(Protocol):
    """In-place biases written by blocks (``put``) and made visible at once (``commit``); ``abort`` leaves the
    table as it was."""

    def put(self, ids: np.ndarray, bias: np.ndarray, nnn_vectors: np.ndarray, topk: np.ndarray | None) -> None: ...
    def commit(self, meta: dict) -> None: ...
    def abort(self) -> None: ...


@dataclass
class GatheredBiasWriter:
    """For a store whose one atomic write is a whole new collection (Qdrant, through its ``write_bias``): the
    blocks are gathered (bias, ``[r, b]``, top-k: ``N x (d + k + 2)`` floats) and written by ``write_bias`` at
    :meth:`commit`; nothing is written before."""

    store: Any
    table: str
    id_column: str | None
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=list)

    def put(self, ids: np.ndarray, bias: np.ndarray, nnn_vectors: np.ndarray, topk: np.ndarray | None) -> None:
        self.parts.append((np.asarray(ids, dtype=object), bias.copy(), nnn_vectors.copy(), None if topk is None
                           else topk.copy()))  # fmt: skip

    def commit(self, meta: dict) -> None:
        ids, bias, vectors, topk = (list(x) for x in zip(*self.parts)) if self.parts else ([], [], [], [])
        if not ids:
            return
        self.store.write_bias(
            self.table, "", self.id_column, np.concatenate(ids), np.concatenate(bias), np.concatenate(vectors),
            None if topk[0] is None else np.concatenate(topk), meta,
        )  # fmt: skip
        self.parts.clear()

    def abort(self) -> None:
        self.parts.clear()


class VectorStore(Protocol):
    """The seam between the jobs and a store (pgvector, LanceDB, Qdrant)."""

    label: str  # the masked URI
    kind: str

    def close(self) -> None: ...
    def exists(self, table: str) -> bool: ...
    def counts(self, table: str) -> tuple[int, int]: ...
    def row_key(self, table: str) -> str | None: ...
    def read_topk(self, table: str, id_column: str | None, ids: np.ndarray, k: int) -> np.ndarray: ...
    def read_meta(self, table: str) -> dict | None: ...
    def write_table(
        self, table: str, spec: WriteSpec, mode: str, index: str, store_metric: str, meta: dict
    ) -> None: ...
    def scan_keys(
        self, table: str, column: str, id_column: str | None, only_missing: bool = False
    ) -> tuple[np.ndarray, int]: ...
    def scan(
        self, table: str, column: str, id_column: str | None, only_missing: bool, block_rows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...
    def bias_writer(self, table: str, id_column: str | None, dim: int, k: int | None) -> BiasWriter: ...
    def search(
        self, table: str, queries: np.ndarray, top_k: int, meta: dict, effort: SearchEffort | None = None
    ) -> StoreHits: ...
    def lock(self, table: str, wait: float) -> contextlib.AbstractContextManager[Any]: ...


def where(store: VectorStore, table: str, column: str | None = None) -> str:
    """``URI table T column C``: how messages name a place in a store (credentials masked)."""
    return f"{store.label} table {table!r}" + (f" column {column!r}" if column else "")


@contextlib.contextmanager
def closing(store: VectorStore) -> Iterator[VectorStore]:
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            store.close()
