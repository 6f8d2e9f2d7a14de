"""Qdrant (its embedded local mode ``qdrant:PATH``, or a server ``qdrant:http://HOST:6333``) as a source and
a sink.

A collection cannot gain a vector after it is made, so every write builds a new collection
(``NAME__nnn_<time>``) with the named vector ``nnn_vector`` (``[r, b]``, distance ``Dot``; ``Euclid`` for the
L2 form) beside the user's vectors and payload, copied as they were, then points the alias ``NAME`` at it
and deletes the old one: readers of ``NAME`` see the old collection or the new one.  The provenance is the
collection's metadata (key ``nnn``).  Local mode lets one process open a folder at a time: that is the lock.

The switch is one ``update_collection_aliases`` call (local mode applies it to a copy and writes its
``meta.json`` whole with ``os.replace``; a server applies the operations together), so a run stopped
before it, even by ``kill -9`` after the new collection is written, leaves ``NAME`` on the old collection.
One case cannot be atomic: the first time nnn writes a *plain* collection called ``NAME`` (the user's own,
debiased in place), an alias cannot take a collection's name, so the plain collection is deleted just
before the alias is made (two calls back to back; on a server a reader between them finds no ``NAME``).
The new collection is marked complete (metadata ``nnn_publish``) before that, so if the run dies between
the two calls, ``NAME`` still resolves to the new, complete collection and the next write makes the alias.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from nnn_cli.data.stores.common import (
    BIAS_COLUMN,
    ROW_COLUMN,
    TOPK_COLUMN,
    VECTOR_COLUMN,
    GatheredBiasWriter,
    SearchEffort,
    StoreHits,
    WriteSpec,
    align_topk,
    check_unique,
    mask_uri,
    query_rows,
    score_from_l2,
    scrub,
    uri_secrets,
    where,
)
from nnn_cli.errors import BusyError, DependencyError, InputError, MismatchError, ParameterError, install_hint

EMBED_VECTOR = "embedding"
ID_FIELD = "id"
PUBLISH_KEY = "nnn_publish"  # set on a new collection once it is whole, just before the alias switch
BATCH = 1024


def _client():
    try:
        from qdrant_client import QdrantClient, models
    except ImportError as exc:
        raise DependencyError(f"Qdrant stores need the qdrant extra: {install_hint('qdrant')} ({exc})") from None
    return QdrantClient, models


class QdrantStore:
    """A Qdrant database: a local folder (embedded mode) or a server URL."""

    kind = "qdrant"

    def __init__(self, uri: str, io_timeout: float = 10.0):
        QdrantClient, self.m = _client()
        self.uri = uri
        self.label = mask_uri(uri)
        self.io_timeout = float(io_timeout)
        self._secrets = uri_secrets(uri)
        target = uri[len("qdrant:") :]
        self.local = "://" not in target
        if not target:
            raise ParameterError(
                "qdrant: needs a folder or URL, e.g. qdrant:./qdrant_data or qdrant:http://127.0.0.1:6333"
            )
        try:
            if "://" in target:
                from urllib.parse import parse_qsl, urlsplit

                parts = urlsplit(target)
                key = dict(parse_qsl(parts.query)).get("api_key")
                self.client = QdrantClient(
                    url=f"{parts.scheme}://{parts.netloc}{parts.path}",
                    api_key=key,
                    timeout=max(1, math.ceil(self.io_timeout)),
                )
            else:
                self.client = QdrantClient(path=target)
            self.client.get_collections()
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise BusyError(
                    f"{self.label}: another process has this Qdrant folder open (local mode allows one at a time); "
                    "try again when it is done"
                ) from None
            raise InputError(f"{self.label}: cannot open ({self._msg(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - connection errors come in many classes
            raise InputError(f"{self.label}: cannot connect ({self._msg(exc)})") from None

    def _msg(self, exc: BaseException) -> str:
        lines = [t for t in str(exc).strip().splitlines() if t.strip()]
        return scrub(lines[0] if lines else type(exc).__name__, self._secrets)[:300]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    # -- names -----------------------------------------------------------------------------
    def _aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def _real(self, table: str) -> str | None:
        """The collection ``table`` names (through its alias), or None."""
        aliases = self._aliases()
        if table in aliases:
            return aliases[table]
        names = {c.name for c in self.client.get_collections().collections}
        return table if table in names else self._orphan(table, names)

    def _orphan(self, table: str, names: set[str]) -> str | None:
        """The newest complete collection written for ``table`` whose switch did not happen (a run that died
        between deleting a plain collection ``table`` and making the alias), or None."""
        prefix = f"{table[:80]}__nnn_"
        stamps = sorted(
            (int(n[len(prefix) :]), n) for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()
        )
        for _, name in reversed(stamps):
            with contextlib.suppress(Exception):
                if (self.client.get_collection(name).config.metadata or {}).get(PUBLISH_KEY) == table:
                    return name
        return None

    def exists(self, table: str) -> bool:
        return self._real(table) is not None

    def _collection(self, table: str) -> str:
        real = self._real(table)
        if real is None:
            raise InputError(f"{where(self, table)}: no such collection")
        return real

    def _vector_params(self, real: str) -> dict[str, Any]:
        vectors = self.client.get_collection(real).config.params.vectors
        if isinstance(vectors, dict):
            return dict(vectors)
        return {"": vectors} if vectors is not None else {}

    def _using(self, table: str, params: dict[str, Any], column: str) -> str:
        if column in params:
            return column
        if "" in params and len(params) == 1 and column == EMBED_VECTOR:
            return ""  # the collection's one unnamed vector
        have = ", ".join(repr(k) for k in params) or "none"
        raise InputError(f"{where(self, table, column)}: no such vector (the collection has {have})")

    # -- source ------------------------------------------------------------------------------
    def _points(self, real: str, flt=None, vectors: bool | list[str] = True) -> Iterator[Any]:
        offset = None
        while True:
            points, offset = self.client.scroll(
                real, scroll_filter=flt, limit=BATCH, offset=offset, with_payload=True, with_vectors=vectors
            )
            yield from points
            if offset is None:
                return

    def _missing_filter(self):
        m = self.m
        return m.Filter(must=[m.IsEmptyCondition(is_empty=m.PayloadField(key=BIAS_COLUMN))])

    def _scan_points(self, table: str, column: str, only_missing: bool, block_rows: int, vectors: bool):
        """Scroll pages of at most ``block_rows`` points (in point-id order): ``(page, the vector's name)``."""
        real = self._collection(table)
        using = self._using(table, self._vector_params(real), column)
        flt = self._missing_filter() if only_missing else None
        offset = None
        while True:
            points, offset = self.client.scroll(
                real, scroll_filter=flt, limit=max(1, int(block_rows)), offset=offset, with_payload=True,
                with_vectors=([using] if using else True) if vectors else False,
            )  # fmt: skip
            yield points, using
            if offset is None:
                return

    def _point_keys(self, table: str, points: list, id_column: str | None) -> np.ndarray:
        keys = [p.id if id_column is None else (p.payload or {}).get(id_column) for p in points]
        for p, key in zip(points, keys):
            if key is None:
                raise InputError(
                    f"{where(self, table, id_column)}: point {p.id} has no such payload field (--id-column)"
                )
        return np.asarray([str(v) for v in keys], dtype=object)

    def scan_keys(
        self, table: str, column: str, id_column: str | None, only_missing: bool = False
    ) -> tuple[np.ndarray, int]:
        """(the point keys in scroll order, d): scroll pages without vectors."""
        keys = [self._point_keys(table, page, id_column) for page, _ in self._scan_points(table, column,
                                                                                          only_missing, BATCH, False)]  # fmt: skip
        ids = np.concatenate(keys) if keys else np.empty(0, dtype=object)
        check_unique(where(self, table, id_column or "point id"), ids)
        real = self._collection(table)
        params = self._vector_params(real)
        return ids, int(params[self._using(table, params, column)].size)

    def scan(
        self, table: str, column: str, id_column: str | None, only_missing: bool, block_rows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(keys, vectors)`` by scroll pages of at most ``block_rows`` points."""
        for page, using in self._scan_points(table, column, only_missing, block_rows, True):
            rows = []
            for p in page:
                vec = p.vector.get(using) if isinstance(p.vector, dict) else p.vector
                if vec is None:
                    raise InputError(f"{where(self, table, column)}: point {p.id} has no vector; fill or delete it")
                rows.append(vec)
            if page:
                yield self._point_keys(table, page, id_column), np.asarray(rows, dtype=np.float32)

    def bias_writer(self, table: str, id_column: str | None, dim: int, k: int | None) -> GatheredBiasWriter:
        """The blocks gathered, then one new collection behind the alias at commit (Qdrant has no transactions)."""
        return GatheredBiasWriter(self, table, id_column)

    def counts(self, table: str) -> tuple[int, int]:
        real = self._collection(table)
        n = self.client.count(real, exact=True).count
        return n, self.client.count(real, count_filter=self._missing_filter(), exact=True).count

    def row_key(self, table: str) -> str | None:
        return None  # the point id

    def read_topk(self, table: str, id_column: str | None, ids: np.ndarray, k: int) -> np.ndarray:
        keys, values = [], []
        for p in self._points(self._collection(table), vectors=False):
            payload = p.payload or {}
            keys.append(p.id if id_column is None else payload.get(id_column))
            values.append(payload.get(TOPK_COLUMN))
        return align_topk(where(self, table), keys, values, ids, k)

    def read_meta(self, table: str) -> dict | None:
        real = self._real(table)
        if real is None:
            return None
        meta = self.client.get_collection(real).config.metadata or {}
        return meta.get("nnn")

    @contextlib.contextmanager
    def lock(self, table: str, wait: float) -> Iterator[None]:
        yield  # local mode: this client holds the folder; a server: the alias switch is the commit

    # -- sinks ---------------------------------------------------------------------------------
    def _new_name(self, table: str) -> str:
        return f"{table[:80]}__nnn_{int(time.time() * 1000)}"

    def _publish(self, table: str, new: str) -> None:
        """Point the alias ``table`` at ``new`` (one aliases operation), then drop what it named before."""
        m = self.m
        self.client.update_collection(new, metadata={PUBLISH_KEY: table})  # whole: a recovery may use it
        aliases = self._aliases()
        old = aliases.get(table)
        names = {c.name for c in self.client.get_collections().collections}
        ops: list[Any] = []
        if table in aliases:
            ops.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=table)))
        ops.append(m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name=new, alias_name=table)))
        if old is None and table in names:
            # a plain collection of that name (e.g. the user's): an alias cannot take its name while it exists,
            # so it goes just before the alias is made (the one non-atomic step; see the module's docstring)
            self.client.delete_collection(table)
        elif old is None:
            old = self._orphan(table, names - {new})  # a switch a killed run did not make
        self.client.update_collection_aliases(change_aliases_operations=ops)
        if old is not None and old != new:
            with contextlib.suppress(Exception):
                self.client.delete_collection(old)
        if self.local:  # one process at a time: collections left by a killed run (kill -9) are no one's
            prefix = f"{table[:80]}__nnn_"
            for c in self.client.get_collections().collections:
                if c.name.startswith(prefix) and c.name != new:
                    with contextlib.suppress(Exception):
                        self.client.delete_collection(c.name)

    def write_table(self, table: str, spec: WriteSpec, mode: str, index: str, store_metric: str, meta: dict) -> None:
        m = self.m
        exists = self.exists(table)
        if mode == "create" and exists:
            raise ParameterError(f"{where(self, table)}: already exists; give --replace to rewrite it or --append")
        dist = m.Distance.DOT if store_metric == "ip" else m.Distance.EUCLID
        n, d = spec.vectors.shape
        dd = spec.nnn_vectors.shape[1]
        new = self._new_name(table)
        self.client.create_collection(
            new,
            vectors_config={
                VECTOR_COLUMN: m.VectorParams(size=dd, distance=dist),
                EMBED_VECTOR: m.VectorParams(size=d, distance=m.Distance.DOT),
            },
            metadata={"nnn": meta},
            hnsw_config=None if index != "none" else m.HnswConfigDiff(m=0),
        )
        try:
            if mode == "append":
                real = self._collection(table)
                if (
                    self._vector_params(real).get(VECTOR_COLUMN) is None
                    or self._vector_params(real)[VECTOR_COLUMN].size != dd
                ):
                    raise MismatchError(
                        f"{where(self, table, VECTOR_COLUMN)}: another dimension than the {dd} the rows need"
                    )
                old_ids = {str((p.payload or {}).get(ID_FIELD)) for p in self._points(real, vectors=False)}
                clash = sum(str(v) in old_ids for v in spec.ids)
                if clash:
                    raise InputError(f"{where(self, table)}: {clash} of the new ids are already in the table")
                self._copy_points(real, new, {})
            payloads = [
                {ID_FIELD: str(spec.ids[i]), ROW_COLUMN: int(spec.row_offset + i), BIAS_COLUMN: float(spec.bias[i])}
                | {c: v[i] for c, v in spec.columns.items()}
                for i in range(n)
            ]
            self.client.upload_collection(
                new,
                vectors={VECTOR_COLUMN: spec.nnn_vectors, EMBED_VECTOR: spec.vectors},
                payload=payloads,
                ids=list(range(spec.row_offset, spec.row_offset + n)),
                batch_size=BATCH,
                wait=True,
            )
            self._publish(table, new)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.delete_collection(new)
            raise

    def _copy_points(
        self, real: str, new: str, updates: dict[str, tuple[dict, list[float]]], id_column: str | None = None
    ) -> None:
        """Every point of ``real`` into ``new`` with its vectors and payload as they were; points in ``updates``
        also get the payload fields and the ``nnn_vector`` given there."""
        m = self.m
        batch: list[Any] = []
        for p in self._points(real):
            vector = dict(p.vector) if isinstance(p.vector, dict) else {"": p.vector}
            payload = dict(p.payload or {})
            key = str(p.id if id_column is None else payload.get(id_column))
            if key in updates:
                fields, nvec = updates[key]
                payload.update(fields)
                vector[VECTOR_COLUMN] = nvec
            batch.append(m.PointStruct(id=p.id, vector=vector if "" not in vector else vector[""], payload=payload))
            if len(batch) >= BATCH:
                self.client.upsert(new, batch, wait=True)
                batch = []
        if batch:
            self.client.upsert(new, batch, wait=True)

    def write_bias(
        self,
        table: str,
        column: str,
        id_column: str | None,
        ids: np.ndarray,
        bias: np.ndarray,
        nnn_vectors: np.ndarray,
        topk: np.ndarray | None,
        meta: dict,
    ) -> None:
        m = self.m
        real = self._collection(table)
        info = self.client.get_collection(real)
        params = self._vector_params(real)
        if "" in params:
            raise InputError(
                f"{where(self, table)}: has one unnamed vector; nnn adds the named vector {VECTOR_COLUMN!r}, which "
                "needs the collection's vectors to be named (recreate it with vectors_config={'embedding': ...})"
            )
        dd = nnn_vectors.shape[1]
        if VECTOR_COLUMN in params and params[VECTOR_COLUMN].size != dd:
            raise MismatchError(
                f"{where(self, table, VECTOR_COLUMN)}: holds another dimension than the {dd} this run writes"
            )
        params = {k: v for k, v in params.items() if k != VECTOR_COLUMN}
        params[VECTOR_COLUMN] = m.VectorParams(size=dd, distance=m.Distance.DOT)
        new = self._new_name(table)
        self.client.create_collection(
            new,
            vectors_config=params,
            metadata={**(info.config.metadata or {}), "nnn": meta},
        )
        try:
            updates = {
                str(key): (
                    {BIAS_COLUMN: float(bias[i])} | ({TOPK_COLUMN: topk[i].tolist()} if topk is not None else {}),
                    nnn_vectors[i].tolist(),
                )
                for i, key in enumerate(ids)
            }
            self._copy_points(real, new, updates, id_column)
            if self.client.count(new, exact=True).count != self.client.count(real, exact=True).count:
                raise InputError(
                    f"{where(self, table)}: the collection changed while the biases were computed; run again"
                )
            self._publish(table, new)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.delete_collection(new)
            raise

    # -- queries ----------------------------------------------------------------------------------
    def search(
        self, table: str, queries: np.ndarray, top_k: int, meta: dict, effort: SearchEffort | None = None
    ) -> StoreHits:
        m = self.m
        real = self._collection(table)
        params = self._vector_params(real)
        if VECTOR_COLUMN not in params:
            raise InputError(f"{where(self, table)}: has no {VECTOR_COLUMN} vector; run nnn bias --in-place first")
        distance = params[VECTOR_COLUMN].distance
        if distance == m.Distance.COSINE:
            raise MismatchError(
                f"{where(self, table, VECTOR_COLUMN)}: uses Cosine distance, which renormalises [r, b] and so changes "
                "each item's bias; recreate it with nnn export (Dot)"
            )
        store_metric = "ip" if distance == m.Distance.DOT else "l2"
        q = query_rows(queries, store_metric)
        effort = effort or SearchEffort()
        knobs = None  # local mode always scans every point (and warns on stderr when given search params)
        if not self.local and (effort.exact or effort.ef_search is not None):
            knobs = m.SearchParams(hnsw_ef=effort.ef_search, exact=effort.exact)
        requests = [
            m.QueryRequest(
                query=row.tolist(), using=VECTOR_COLUMN, limit=top_k, params=knobs, with_payload=[ID_FIELD, ROW_COLUMN]
            )
            for row in q
        ]
        answers = self.client.query_batch_points(real, requests)
        got = min([top_k] + [len(a.points) for a in answers])
        ids = np.empty((len(q), got), dtype=object)
        rows = np.full((len(q), got), -1, dtype=np.int64)
        vals = np.empty((len(q), got), dtype=np.float64)
        by_payload = meta.get("mode") == "export"
        for i, answer in enumerate(answers):
            for j, p in enumerate(answer.points[:got]):
                payload = p.payload or {}
                ids[i, j] = str(payload.get(ID_FIELD)) if by_payload else str(p.id)
                rows[i, j] = int(payload.get(ROW_COLUMN, -1)) if by_payload else -1
                vals[i, j] = p.score
        if store_metric == "ip":
            scores = vals.astype(np.float32)
        else:
            scores = score_from_l2(vals, q, float(meta["l2_max_norm"]))
        return StoreHits(ids, rows, scores)
