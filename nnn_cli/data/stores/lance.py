"""LanceDB (a local folder or an object-store URL) as a source and a sink.

Rows move as Arrow columns.  Every write is one new table version (Lance commits a version atomically:
a reader sees the old table or the new one): an export creates or overwrites the table, ``--append`` and
in-place biases write the whole table back with the user's columns as the very Arrow arrays that were read
(so they stay byte-identical) and ``nnn_bias``/``nnn_vector``/``nnn_topk`` set.  In place, the vectors are read
as Arrow record batches of ``block_rows`` rows (:meth:`LanceStore.scan`) and the results staged by blocks, then
streamed into the one new version (:class:`LanceBiasWriter`).  The provenance is the schema metadata key
``nnn_meta``.  The lock: a ``flock`` beside a local table; on ``s3://`` a lease object ``.NAME.lance.lock``
taken with a conditional write (:mod:`nnn_cli.data.stores.objlock`, its limits there); other object stores
(``gs://``, ``az://``): none, so run one writer at a time there.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from nnn_cli.data.locks import exclusive_lock
from nnn_cli.data.stores.common import (
    BIAS_COLUMN,
    ROW_COLUMN,
    TOPK_COLUMN,
    VECTOR_COLUMN,
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
from nnn_cli.errors import (
    DependencyError,
    InputError,
    MismatchError,
    NNNError,
    OutputError,
    ParameterError,
    install_hint,
)

META_KEY = b"nnn_meta"
ID_COLUMN = "id"
EMBED_COLUMN = "embedding"


def _libs():
    # LanceDB's Rust core logs warnings (deprecations, "no existing dataset") on stderr, which would break
    # the one-line-on-stderr promise; the user's own LANCEDB_LOG wins
    os.environ.setdefault("LANCEDB_LOG", "error")
    try:
        import lancedb
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError as exc:
        raise DependencyError(f"LanceDB stores need the lancedb extra: {install_hint('lancedb')} ({exc})") from None
    return lancedb, pa, pc


def _fsl(pa, values: np.ndarray):
    arr = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


class LanceStore:
    """A LanceDB database (``lancedb:PATH_OR_URL``)."""

    kind = "lancedb"

    def __init__(self, uri: str, io_timeout: float = 10.0, storage_options: dict | None = None):
        self._lancedb, self._pa, self._pc = _libs()
        self.uri = uri
        self.label = mask_uri(uri)
        self.location = uri[len("lancedb:") :]
        self.io_timeout = float(io_timeout)
        self.local = "://" not in self.location
        self._secrets = uri_secrets(uri) + [v for k, v in (storage_options or {}).items() if "secret" in k.lower()]
        if not self.location:
            raise ParameterError("lancedb: needs a folder or URL, e.g. lancedb:./vectors or lancedb:s3://bucket/db")
        opts = {k: str(v) for k, v in (storage_options or {}).items()}
        self._storage_options = dict(opts)  # the lock on s3:// talks to the same endpoint
        if not self.local:
            opts.setdefault("timeout", f"{max(1, math.ceil(self.io_timeout))}s")
            opts.setdefault("connect_timeout", f"{max(1, math.ceil(self.io_timeout))}s")
        self.db = self._timed(lambda: self._lancedb.connect(self.location, storage_options=opts or None), "connect")
        self._timed(lambda: self._list(), "list the tables")

    def _timed(self, fn, what: str) -> Any:
        """Run ``fn`` within --io-timeout (object stores can hang on an unreachable endpoint)."""
        box: dict = {}

        def work():
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(self.io_timeout)
        if thread.is_alive():
            raise InputError(f"{self.label}: cannot {what}: no answer within --io-timeout {self.io_timeout:g}s")
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, InputError):
                raise exc
            raise InputError(f"{self.label}: cannot {what} ({self._msg(exc)})") from None
        return box.get("value")

    def _msg(self, exc: BaseException) -> str:
        lines = [t for t in str(exc).strip().splitlines() if t.strip()]
        return scrub(lines[0] if lines else type(exc).__name__, self._secrets)[:300]

    def _list(self) -> list[str]:
        names: list[str] = []
        token = None
        while True:
            page = self.db.list_tables(page_token=token, limit=1000)
            names.extend(page.tables)
            token = page.page_token
            if not token:
                return names

    def close(self) -> None:
        pass

    def exists(self, table: str) -> bool:
        return table in self._list()

    def _open(self, table: str):
        if not self.exists(table):
            raise InputError(f"{where(self, table)}: no such table")
        return self.db.open_table(table)

    # -- source --------------------------------------------------------------------------
    def _vectors(self, arrow, table: str, column: str) -> np.ndarray:
        pa = self._pa
        if column not in arrow.column_names:
            raise InputError(f"{where(self, table, column)}: no such column")
        col = arrow.column(column)
        kind = col.type
        if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)) or not pa.types.is_floating(
            kind.value_type
        ):
            raise InputError(f"{where(self, table, column)}: is {kind}, not a vector column (a list of floats)")
        if col.null_count:
            first = int(np.argmax(np.asarray(col.is_null())))
            raise InputError(f"{where(self, table, column)}: row {first} has a NULL vector; fill or delete it")
        col = col.combine_chunks()
        if len(col) == 0:
            return np.empty((0, kind.list_size if pa.types.is_fixed_size_list(kind) else 0), dtype=np.float32)
        if pa.types.is_fixed_size_list(kind):
            flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
            return flat.reshape(len(col), kind.list_size)
        lengths = np.asarray(self._pc.list_value_length(col))
        if (lengths != lengths[0]).any():
            raise InputError(f"{where(self, table, column)}: the vectors do not all have one dimension")
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), lengths[0])

    def _key(self, arrow, table: str, id_column: str | None) -> str:
        key = id_column or ID_COLUMN
        if key not in arrow.column_names:
            raise InputError(f"{where(self, table, key)}: no such column (the row key; name it with --id-column)")
        if arrow.column(key).null_count:
            raise InputError(f"{where(self, table, key)}: a row has a NULL key")
        return key

    def _scanner(self, table: str, columns: list[str], only_missing: bool, block_rows: int):
        """Arrow record batches of ``columns`` (at most ``block_rows`` rows each), in the table's order."""
        tbl = self._open(table)
        query = tbl.search().select(columns)
        if only_missing and BIAS_COLUMN in tbl.schema.names:
            query = query.where(f"{BIAS_COLUMN} IS NULL")
        return query.to_batches(max(1, int(block_rows)))

    def scan_keys(
        self, table: str, column: str, id_column: str | None, only_missing: bool = False
    ) -> tuple[np.ndarray, int]:
        """(the row keys in the table's order, d), read as Arrow batches of the key column only."""
        pa = self._pa
        schema = self._open(table).schema
        key = id_column or ID_COLUMN
        for name, what in ((column, ""), (key, " (the row key; name it with --id-column)")):
            if name not in schema.names:
                raise InputError(f"{where(self, table, name)}: no such column{what}")
        kind = schema.field(column).type
        if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)) or not pa.types.is_floating(
            kind.value_type
        ):
            raise InputError(f"{where(self, table, column)}: is {kind}, not a vector column (a list of floats)")
        keys: list[str] = []
        for batch in self._scanner(table, [key], only_missing, 65536):
            col = batch.column(0)
            if col.null_count:
                raise InputError(f"{where(self, table, key)}: a row has a NULL key")
            keys.extend(str(v) for v in col.to_pylist())
        check_unique(where(self, table, key), keys)
        if pa.types.is_fixed_size_list(kind):
            dim = kind.list_size
        else:
            first = next(iter(self._scanner(table, [column], only_missing, 1)), None)
            dim = 0 if first is None or not len(first) else len(first.column(0)[0].as_py() or [])
        return np.asarray(keys, dtype=object), int(dim)

    def scan(
        self, table: str, column: str, id_column: str | None, only_missing: bool, block_rows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(keys, vectors)`` of at most ``block_rows`` rows at a time: Arrow record batches of the key and
        the vector column."""
        key = id_column or ID_COLUMN
        for batch in self._scanner(table, [key, column], only_missing, block_rows):
            part = self._pa.Table.from_batches([batch])
            keys = np.asarray([str(v) for v in part.column(key).to_pylist()], dtype=object)
            yield keys, self._vectors(part, table, column)

    def bias_writer(self, table: str, id_column: str | None, dim: int, k: int | None) -> LanceBiasWriter:
        """Blocks staged in a local temporary table, then one new table version streamed at commit."""
        return LanceBiasWriter(self, table, id_column, dim, k)

    def counts(self, table: str) -> tuple[int, int]:
        tbl = self._open(table)
        n = tbl.count_rows()
        if BIAS_COLUMN not in tbl.schema.names:
            return n, n
        return n, tbl.count_rows(f"{BIAS_COLUMN} IS NULL")

    def row_key(self, table: str) -> str | None:
        return ID_COLUMN

    def read_topk(self, table: str, id_column: str | None, ids: np.ndarray, k: int) -> np.ndarray:
        arrow = self._open(table).to_arrow()
        if TOPK_COLUMN not in arrow.column_names:
            raise InputError(f"{where(self, table)}: has no {TOPK_COLUMN} column; run nnn bias --in-place first")
        key = self._key(arrow, table, id_column)
        return align_topk(
            where(self, table), arrow.column(key).to_pylist(), arrow.column(TOPK_COLUMN).to_pylist(), ids, k
        )

    def read_meta(self, table: str) -> dict | None:
        if not self.exists(table):
            return None
        meta = (self.db.open_table(table).schema.metadata or {}).get(META_KEY)
        return json.loads(meta) if meta else None

    @contextlib.contextmanager
    def lock(self, table: str, wait: float) -> Iterator[None]:
        if self.location.startswith(("s3://", "s3a://")):
            from nnn_cli.data.stores.objlock import lock_key, s3_client, s3_lease_lock

            bucket, key = lock_key(self.location, f"{table}.lance")
            client = s3_client(self._storage_options, self.io_timeout)
            with s3_lease_lock(client, bucket, key, wait, where(self, table)):
                yield
            return
        if not self.local:  # gs://, az://, ...: no lock (see the module's docstring)
            yield
            return
        from pathlib import Path

        folder = Path(self.location)
        if not folder.is_dir():
            raise InputError(f"{self.label}: no such folder")
        with exclusive_lock(folder / f"{table}.lance", wait, what="LanceDB table"):
            yield

    # -- sinks ---------------------------------------------------------------------------
    def _with_meta(self, arrow, meta: dict):
        md = dict(arrow.schema.metadata or {})
        md[META_KEY] = json.dumps(meta).encode()
        return arrow.replace_schema_metadata(md)

    def write_table(self, table: str, spec: WriteSpec, mode: str, index: str, store_metric: str, meta: dict) -> None:
        pa = self._pa
        exists = self.exists(table)
        if mode == "create" and exists:
            raise ParameterError(f"{where(self, table)}: already exists; give --replace to rewrite it or --append")
        n = len(spec.ids)
        cols = {
            ID_COLUMN: pa.array([str(v) for v in spec.ids], pa.string()),
            ROW_COLUMN: pa.array(np.arange(n, dtype=np.int64) + spec.row_offset),
            EMBED_COLUMN: _fsl(pa, spec.vectors),
            BIAS_COLUMN: pa.array(np.asarray(spec.bias, dtype=np.float32)),
            VECTOR_COLUMN: _fsl(pa, spec.nnn_vectors),
        }
        for name, values in spec.columns.items():
            cols[name] = pa.array(values, pa.string())
        new = pa.table(cols)
        if mode == "append":
            tbl = self._open(table)
            old = tbl.to_arrow()
            have = old.schema.field(VECTOR_COLUMN).type.list_size
            if have != spec.nnn_vectors.shape[1]:
                raise MismatchError(
                    f"{where(self, table, VECTOR_COLUMN)}: holds d={have}, the rows need {spec.nnn_vectors.shape[1]}"
                )
            clash = self._pc.is_in(new.column(ID_COLUMN), value_set=old.column(ID_COLUMN))
            if self._pc.any(clash).as_py():
                raise InputError(
                    f"{where(self, table)}: {self._pc.sum(clash).as_py()} of the new ids are already in the table"
                )
            try:
                new = pa.concat_tables(
                    [old.replace_schema_metadata(None), new.select(old.column_names).cast(old.schema.remove_metadata())]
                )
            except (KeyError, pa.ArrowInvalid) as exc:
                raise InputError(
                    f"{where(self, table)}: the new rows do not fit the table ({self._msg(exc)})"
                ) from None
        data = self._with_meta(new, meta)
        self._write(table, data, "create" if mode == "create" else "overwrite")
        if index != "none":
            self._index(table, index, store_metric, len(data))

    def _write(self, table: str, data, mode: str) -> None:
        """One new version (not under --io-timeout: a large write takes as long as it takes, and a write
        abandoned by a timer could still commit later)."""
        try:
            self.db.create_table(table, data, schema=data.schema, mode=mode)
        except OSError as exc:
            raise OutputError(
                f"{where(self, table)}: cannot write ({self._msg(exc)}); the table is unchanged"
            ) from None
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"{where(self, table)}: cannot write ({self._msg(exc)}); the table is unchanged") from None

    def _index(self, table: str, index: str, store_metric: str, n: int) -> None:
        tbl = self.db.open_table(table)
        kind = "IVF_HNSW_SQ" if index == "hnsw" else "IVF_FLAT"
        try:
            tbl.create_index(
                metric="dot" if store_metric == "ip" else "l2",
                vector_column_name=VECTOR_COLUMN,
                index_type=kind,
                num_partitions=max(1, min(1024, int(math.sqrt(n)))),
            )
        except Exception as exc:  # noqa: BLE001 - LanceDB raises plain exceptions for training problems
            raise InputError(
                f"{where(self, table)}: the rows were written, but the {index} index was not ({self._msg(exc)})"
            ) from None

    # -- queries ---------------------------------------------------------------------------
    def search(
        self, table: str, queries: np.ndarray, top_k: int, meta: dict, effort: SearchEffort | None = None
    ) -> StoreHits:
        store_metric = meta.get("store_metric", "ip")
        key = meta.get("id_column") or ID_COLUMN
        tbl = self._open(table)
        if VECTOR_COLUMN not in tbl.schema.names:
            raise InputError(f"{where(self, table)}: has no {VECTOR_COLUMN} column; run nnn bias --in-place first")
        q = query_rows(queries, store_metric)
        has_row = ROW_COLUMN in tbl.schema.names
        select = [key] + ([ROW_COLUMN] if has_row else [])
        builder = (
            tbl.search(list(q), vector_column_name=VECTOR_COLUMN)
            .distance_type("dot" if store_metric == "ip" else "l2")
            .limit(top_k)
            .select(select)
        )
        effort = effort or SearchEffort()
        if effort.exact:
            builder = builder.bypass_vector_index()
        elif effort.ef_search is not None:
            # IVF partitions probed, the HNSW candidate list (>= top-k), and N candidates re-ranked by their
            # exact vectors (refine_factor): the scalar-quantised IVF_HNSW_SQ index otherwise caps the recall
            ef = max(effort.ef_search, top_k)
            builder = builder.nprobes(effort.ef_search).ef(ef).refine_factor(-(-ef // top_k))
        res = builder.to_arrow()
        qi = (
            np.asarray(res.column("query_index"))
            if "query_index" in res.column_names
            else np.zeros(len(res), dtype=np.int64)
        )
        dist = np.asarray(res.column("_distance"), dtype=np.float64)
        idv = np.asarray([str(v) for v in res.column(key).to_pylist()], dtype=object)
        rowv = np.asarray(res.column(ROW_COLUMN)) if has_row else np.full(len(res), -1, dtype=np.int64)
        counts = np.bincount(qi, minlength=len(q))
        got = int(min(top_k, counts.min())) if len(q) else 0
        ids = np.empty((len(q), got), dtype=object)
        rows = np.full((len(q), got), -1, dtype=np.int64)
        d = np.empty((len(q), got), dtype=np.float64)
        for i in range(len(q)):  # per query (not per gallery row): order by distance, ties by row
            sel = np.flatnonzero(qi == i)
            sel = sel[np.lexsort((rowv[sel], dist[sel]))][:got]
            ids[i], rows[i], d[i] = idv[sel], rowv[sel], dist[sel]
        if store_metric == "ip":
            scores = (1.0 - d).astype(np.float32)  # LanceDB's dot distance is 1 - <x, y>
        else:
            scores = score_from_l2(np.sqrt(np.maximum(d, 0)), q, float(meta["l2_max_norm"]))  # squared L2
        return StoreHits(ids, rows, scores)


STAGE_BATCH = 16384


def _merge_column(pa, old, hit: np.ndarray, values: np.ndarray, width: int | None):
    """A column of one batch: the rows ``hit`` set to ``values``, every other row as it was (null where it was
    null, or where the old column had another width)."""
    n = len(hit)
    out = np.zeros((n,) if width is None else (n, width), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    if old is not None and (width is None or old.type.list_size == width):
        valid = ~np.asarray(old.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        kept = old.drop_null() if width is None else old.flatten()  # flatten skips null slots
        if valid.any():
            out[valid] = np.asarray(kept.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(out[valid].shape)
    out[hit] = values
    valid = valid | hit
    if width is None:
        return pa.array(out, mask=~valid)
    mask = pa.array(~valid) if (~valid).any() else None
    return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), width, mask=mask)


class _Staged:
    """The staged rows read back in the order they were written, a window at a time."""

    def __init__(self, batches: Iterator[Any], dim: int, k: int | None):
        self.batches, self.dim, self.k = batches, dim, k
        self.parts: dict[str, np.ndarray] = {}

    def _more(self) -> bool:
        batch = next(self.batches, None)
        if batch is None:
            return False
        part = {
            "id": np.asarray(batch.column(0).to_numpy(zero_copy_only=False)).astype(str),
            "b": np.asarray(batch.column(1).to_numpy(zero_copy_only=False), dtype=np.float32),
            "v": np.asarray(batch.column(2).flatten().to_numpy(), dtype=np.float32).reshape(-1, self.dim),
        }
        if self.k:
            part["k"] = np.asarray(batch.column(3).flatten().to_numpy(), dtype=np.float32).reshape(-1, self.k)
        self.parts = part if not self.parts else {key: np.concatenate([self.parts[key], part[key]]) for key in part}
        return True

    def window(self, m: int) -> dict[str, np.ndarray]:
        while len(self.parts.get("id", ())) < m and self._more():
            pass
        return {key: v[:m] for key, v in self.parts.items()}

    def take(self, c: int) -> None:
        self.parts = {key: v[c:] for key, v in self.parts.items()}

    @property
    def left(self) -> int:
        while self._more():
            pass
        return len(self.parts.get("id", ()))


class LanceBiasWriter:
    """In-place biases by blocks: each block is appended to a staging table in a local temporary folder; at
    commit the table is rewritten as ONE new version from a stream of its own record batches with the staged
    rows merged in (the user's columns as the very Arrow arrays read), so neither the table nor the biases
    are held whole.  A failure before or during the commit leaves the table's version as it was."""

    def __init__(self, store: LanceStore, table: str, id_column: str | None, dim: int, k: int | None):
        self.store, self.table, self.dim, self.k = store, table, int(dim), k
        self.tbl = store._open(table)
        self.version = self.tbl.version
        schema = self.tbl.schema
        self.key = id_column or ID_COLUMN
        if self.key not in schema.names:
            raise InputError(f"{where(store, table, self.key)}: no such column (the row key; name it with --id-column)")
        if VECTOR_COLUMN in schema.names and schema.field(VECTOR_COLUMN).type.list_size != self.dim:
            raise MismatchError(
                f"{where(store, table, VECTOR_COLUMN)}: holds another dimension than the {self.dim} this run writes"
            )
        self.folder = tempfile.mkdtemp(prefix="nnn-lance-stage-")
        self.stage: Any = None
        self.rows = 0
        self.error: Exception | None = None

    def put(self, ids: np.ndarray, bias: np.ndarray, nnn_vectors: np.ndarray, topk: np.ndarray | None) -> None:
        pa = self.store._pa
        cols = {"id": pa.array([str(v) for v in ids], pa.string()), "b": pa.array(np.asarray(bias, np.float32)),
                "v": _fsl(pa, nnn_vectors)}  # fmt: skip
        if self.k:
            assert topk is not None
            cols["k"] = _fsl(pa, topk)
        data = pa.table(cols)
        if self.stage is None:
            self.stage = self.store._lancedb.connect(self.folder).create_table("stage", data)
        else:
            self.stage.add(data)
        self.rows += len(ids)

    def _schema(self, meta: dict):
        pa, old = self.store._pa, self.tbl.schema
        new = {BIAS_COLUMN: pa.float32(), VECTOR_COLUMN: pa.list_(pa.float32(), self.dim)}
        if self.k:
            new[TOPK_COLUMN] = pa.list_(pa.float32(), self.k)
        fields = [pa.field(f.name, new[f.name]) if f.name in new else f for f in old]
        fields += [pa.field(name, kind) for name, kind in new.items() if name not in old.names]
        md = dict(old.metadata or {})
        md[META_KEY] = json.dumps(meta).encode()
        return pa.schema(fields, metadata=md)

    def _batches(self, schema) -> Iterator[Any]:
        try:
            yield from self._merged(schema)
        except Exception as exc:  # raised inside the writer's stream: kept to be raised as it is
            self.error = exc
            raise

    def _merged(self, schema) -> Iterator[Any]:
        pa = self.store._pa
        staged = _Staged(iter(self.stage.search().to_batches(STAGE_BATCH) if self.stage else ()), self.dim, self.k)
        for batch in self.tbl.search().to_batches(STAGE_BATCH):
            keys = np.asarray(batch.column(self.key).to_numpy(zero_copy_only=False)).astype(str)
            win = staged.window(len(keys))
            hit = np.isin(keys, win.get("id", np.empty(0, dtype=str)))
            c = int(hit.sum())
            if not np.array_equal(keys[hit], win.get("id", np.empty(0, dtype=str))[:c]):
                raise InputError(f"{where(self.store, self.table)}: the table changed while the biases were computed")
            values = {BIAS_COLUMN: ("b", None), VECTOR_COLUMN: ("v", self.dim), TOPK_COLUMN: ("k", self.k)}
            arrays = []
            for f in schema:
                if f.name in values and (f.name != TOPK_COLUMN or self.k):
                    part, width = values[f.name]
                    old = batch.column(f.name) if f.name in batch.schema.names else None
                    empty = np.empty((0,) if width is None else (0, width), dtype=np.float32)
                    arrays.append(_merge_column(pa, old, hit, win[part][:c] if part in win else empty, width))
                else:
                    arrays.append(batch.column(f.name))
            staged.take(c)
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        if staged.left:
            raise InputError(
                f"{where(self.store, self.table)}: {staged.left} rows vanished while the biases were computed"
            )

    def commit(self, meta: dict) -> None:
        """One new version: the table streamed with the staged rows merged in, the provenance in its schema."""
        try:
            if self.store.db.open_table(self.table).version != self.version:
                raise InputError(
                    f"{where(self.store, self.table)}: the table changed while the biases were computed; run again"
                )
            schema = self._schema(meta)
            reader = self.store._pa.RecordBatchReader.from_batches(schema, self._batches(schema))
            try:
                self.store._write(self.table, reader, "overwrite")
            except NNNError:
                if isinstance(self.error, NNNError):  # bad input met in the stream: its own line
                    raise self.error from None
                raise
        finally:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
