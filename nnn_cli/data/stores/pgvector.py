"""PostgreSQL + pgvector as a source and a sink (psycopg 3).

- Rows move by binary ``COPY`` built and parsed with numpy (fixed-width records; the id, the only
  variable-width field, goes last), so neither direction loops over floats in Python.
- Identifiers are always :class:`psycopg.sql.Identifier` and values always parameters.
- An export builds the new table under a temporary name and swaps it in, the old one dropped, in the
  same transaction: a killed export leaves the old table as it was.  In place, the vectors are read by a
  server-side cursor in binary fetches of ``block_rows`` rows (:meth:`PgVectorStore.scan`, a session of its
  own in one snapshot) and the biases written by blocks into a temporary staging table
  (:class:`PgBiasWriter`), then one transaction adds the columns and sets every row by one ``UPDATE ... FROM``.
- Provenance lives in the table ``nnn_meta`` (one JSON row per table); the lock is an advisory lock.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from collections.abc import Iterator

import numpy as np

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
    BusyError,
    DependencyError,
    InputError,
    MismatchError,
    OutputError,
    ParameterError,
    install_hint,
)

META_TABLE = "nnn_meta"
ID_COLUMN = "id"
EMBED_COLUMN = "embedding"
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_INLINE_BYTES = 6000  # the two vectors of a row kept inline while they take at most this (a page holds 8,160)


def _inline_fits(d: int) -> bool:
    """Whether ``vector(d)`` and ``vector(d + 1)`` fit inline in one row with room for the id and the rest:
    pgvector's default storage (EXTERNAL) moves every vector over about 2 KB (d > 508) out to a TOAST table,
    which costs a third of a COPY's server time and a second lookup for every row read."""
    return (4 * d + 8) + (4 * (d + 1) + 8) <= _INLINE_BYTES


_FLOAT4_OID = 700
PG_MAX_EF_SEARCH = 1000  # pgvector's range for hnsw.ef_search


def _psycopg():
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:
        raise DependencyError(
            f"PostgreSQL stores need the pgvector extra: {install_hint('pgvector')} ({exc})"
        ) from None
    return psycopg, sql


def _vector_field(n: int, dim: int) -> list:
    return [(f"{n}_len", ">i4"), (f"{n}_dim", ">i2"), (f"{n}_unused", ">i2"), (f"{n}_vals", ">f4", (dim,))]


def _fill_vector(rec: np.ndarray, n: str, values: np.ndarray) -> None:
    rec[f"{n}_len"] = 4 + 4 * values.shape[1]
    rec[f"{n}_dim"] = values.shape[1]
    rec[f"{n}_unused"] = 0
    rec[f"{n}_vals"] = values


def _interleave(fixed: np.ndarray, texts: list[bytes]) -> bytes:
    """Binary COPY rows: each row's fixed-width record followed by its id (int32 length + UTF-8)."""
    raw = fixed.view(np.uint8).reshape(len(fixed), -1)
    parts: list[bytes] = []
    for i, text in enumerate(texts):
        parts.append(raw[i].tobytes())
        parts.append(len(text).to_bytes(4, "big") + text)
    return b"".join(parts)


class PgVectorStore:
    """A PostgreSQL database with the ``vector`` extension (``postgresql://...``)."""

    kind = "pgvector"

    def __init__(self, uri: str, io_timeout: float = 10.0, application: str = "nnn"):
        psycopg, sql = _psycopg()
        self.uri = uri
        self.label = mask_uri(uri)
        self.io_timeout = float(io_timeout)
        self._secrets = uri_secrets(uri)
        self._sql = sql
        self._psycopg = psycopg
        try:
            self.conn = psycopg.connect(
                uri,
                connect_timeout=max(1, math.ceil(self.io_timeout)),
                application_name=application[:60],
                autocommit=True,
            )
        except psycopg.Error as exc:
            raise InputError(f"{self.label}: cannot connect ({self._msg(exc)})") from None
        except (ValueError, OSError) as exc:
            raise InputError(f"{self.label}: cannot connect ({self._msg(exc)})") from None
        self._timeouts(True)
        row = self._one("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        if row is None:
            try:
                self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                self.close()
                raise InputError(
                    f"{self.label}: the pgvector extension is not installed and could not be created ({self._msg(exc)})"
                ) from None

    # -- plumbing ---------------------------------------------------------------
    def _msg(self, exc: BaseException) -> str:
        text = str(exc).strip().splitlines()
        lines = [t for t in text if t.strip()]
        line = lines[-1] if lines else type(exc).__name__
        for prefix in ("connection failed: ",):
            line = line.replace(prefix, "")
        return scrub(line, self._secrets)

    def _timeouts(self, short: bool) -> None:
        ms = int(self.io_timeout * 1000) if short else 0
        self.conn.execute(self._sql.SQL("SET statement_timeout = {}").format(self._sql.Literal(ms)))
        self.conn.execute(self._sql.SQL("SET lock_timeout = {}").format(self._sql.Literal(int(self.io_timeout * 1000))))

    def _one(self, query, params=None):
        try:
            return self.conn.execute(query, params).fetchone()
        except self._psycopg.errors.QueryCanceled:
            raise InputError(f"{self.label}: no answer within --io-timeout {self.io_timeout:g}s") from None
        except self._psycopg.Error as exc:
            raise InputError(f"{self.label}: {self._msg(exc)}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()

    # -- what is there -------------------------------------------------------------
    def exists(self, table: str) -> bool:
        return self._one("SELECT to_regclass(%s) IS NOT NULL", (self._sql.Identifier(table).as_string(self.conn),))[0]

    def _columns(self, table: str) -> dict[str, str]:
        rows = self.conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (self._sql.Identifier(table).as_string(self.conn),),
        ).fetchall()
        return {str(name): str(kind) for name, kind in rows}

    def _primary_key(self, table: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary",
            (self._sql.Identifier(table).as_string(self.conn),),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _check_table(self, table: str) -> dict[str, str]:
        if not self.exists(table):
            raise InputError(f"{where(self, table)}: no such table")
        return self._columns(table)

    def _key(self, table: str, id_column: str | None, columns: dict[str, str]) -> str:
        if id_column is not None:
            if id_column not in columns:
                raise InputError(f"{where(self, table, id_column)}: no such column (--id-column)")
            return id_column
        pk = self._primary_key(table)
        if len(pk) != 1:
            raise InputError(
                f"{where(self, table)}: has no single-column primary key; name the row key with --id-column"
            )
        return pk[0]

    def row_key(self, table: str) -> str | None:
        """The table's single-column primary key."""
        return self._key(table, None, self._check_table(table))

    def read_topk(self, table: str, id_column: str | None, ids: np.ndarray, k: int) -> np.ndarray:
        """Each row's stored ``nnn_topk`` in the order of ``ids``."""
        sql = self._sql
        columns = self._check_table(table)
        if TOPK_COLUMN not in columns:
            raise InputError(f"{where(self, table)}: has no {TOPK_COLUMN} column; run nnn bias --in-place first")
        key = self._key(table, id_column, columns)
        rows = self.conn.execute(
            sql.SQL("SELECT {k}::text, {t} FROM {tab}").format(
                k=sql.Identifier(key), t=sql.Identifier(TOPK_COLUMN), tab=sql.Identifier(table)
            )
        ).fetchall()
        return align_topk(where(self, table), [r[0] for r in rows], [r[1] for r in rows], ids, k)

    def vector_dim(self, table: str, column: str, columns: dict[str, str] | None = None) -> int:
        columns = columns if columns is not None else self._check_table(table)
        if column not in columns:
            raise InputError(f"{where(self, table, column)}: no such column")
        kind = columns[column]
        if not kind.startswith("vector"):
            raise InputError(f"{where(self, table, column)}: is {kind}, not a pgvector vector column")
        if "(" not in kind:
            raise InputError(
                f"{where(self, table, column)}: has no fixed dimension (declare it as vector(d) to use it with nnn)"
            )
        return int(kind[kind.index("(") + 1 : kind.index(")")])

    # -- source ------------------------------------------------------------------------
    def _scan_sql(self, table: str, column: str, id_column: str | None, only_missing: bool):
        """(key, dim, the WHERE of the rows to read, the WHERE finding a NULL vector among them)."""
        sql = self._sql
        columns = self._check_table(table)
        dim = self.vector_dim(table, column, columns)
        key = self._key(table, id_column, columns)
        missing = only_missing and BIAS_COLUMN in columns
        cond = sql.SQL(" WHERE {} IS NULL").format(sql.Identifier(BIAS_COLUMN)) if missing else sql.SQL("")
        null_cond = sql.SQL(" WHERE {} IS NULL").format(sql.Identifier(column)) + (
            sql.SQL(" AND {} IS NULL").format(sql.Identifier(BIAS_COLUMN)) if missing else sql.SQL("")
        )
        return key, dim, cond, null_cond

    def scan_keys(
        self, table: str, column: str, id_column: str | None, only_missing: bool = False
    ) -> tuple[np.ndarray, int]:
        """(the row keys as strings in key order, d): one pass over the keys only; refuses NULL vectors, NULL
        and duplicate keys, a missing or non-vector column."""
        sql = self._sql
        key, dim, cond, null_cond = self._scan_sql(table, column, id_column, only_missing)
        t, kc = sql.Identifier(table), sql.Identifier(key)
        try:
            with self._transaction():
                self._timeouts(False)
                null = self._one(sql.SQL("SELECT {k}::text FROM {t}{w} LIMIT 1").format(k=kc, t=t, w=null_cond))
                if null is not None:
                    raise InputError(
                        f"{where(self, table, column)}: row {null[0]} has a NULL vector; fill or delete it"
                    )
                query = sql.SQL("SELECT {t}.{k}::text FROM {t}{w} ORDER BY {t}.{k}").format(k=kc, t=t, w=cond)
                ids = [r[0] for r in self.conn.execute(query).fetchall()]
        except InputError as exc:
            raise InputError(str(exc).replace("; nothing was changed", "")) from None
        if any(v is None for v in ids):
            raise InputError(f"{where(self, table, key)}: a row has a NULL key")
        check_unique(where(self, table, key), ids)
        return np.asarray(ids, dtype=object), dim

    def scan(
        self, table: str, column: str, id_column: str | None, only_missing: bool, block_rows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(keys, vectors)`` of at most ``block_rows`` rows at a time, in key order: a server-side cursor
        fetched in binary on a session of its own (in one snapshot), the vectors parsed by numpy."""
        sql = self._sql
        key, dim, cond, _ = self._scan_sql(table, column, id_column, only_missing)
        query = sql.SQL("SELECT {t}.{k}::text, {t}.{c} FROM {t}{w} ORDER BY {t}.{k}").format(
            t=sql.Identifier(table), k=sql.Identifier(key), c=sql.Identifier(column), w=cond
        )
        rec = np.dtype(_vector_field(0, dim)[1:])  # binary vector: dim int16, unused int16, floats
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self.uri, connect_timeout=max(1, math.ceil(self.io_timeout)), autocommit=False)
        except (psycopg.Error, ValueError, OSError) as exc:
            raise InputError(f"{self.label}: cannot connect ({self._msg(exc)})") from None
        try:
            from psycopg.types.string import ByteaBinaryLoader

            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # every fetch: one snapshot
            oid = conn.execute("SELECT 'vector'::regtype::oid").fetchone()[0]
            conn.adapters.register_loader(oid, ByteaBinaryLoader)  # the vector's bytes, parsed below in one go
            with conn.cursor(name="nnn_scan", binary=True) as cur:
                cur.execute(query)
                while rows := cur.fetchmany(block_rows):
                    keys = np.asarray([r[0] for r in rows], dtype=object)
                    null = next((r[0] for r in rows if r[1] is None), None)
                    if null is not None:
                        raise InputError(
                            f"{where(self, table, column)}: row {null} has a NULL vector; fill or delete it"
                        )
                    raw = np.frombuffer(b"".join(r[1] for r in rows), dtype=rec)
                    yield keys, raw["0_vals"].astype(np.float32)
        except psycopg.Error as exc:
            raise InputError(f"{where(self, table, column)}: cannot read ({self._msg(exc)})") from None
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def counts(self, table: str) -> tuple[int, int]:
        """(rows, rows without a bias)."""
        sql = self._sql
        columns = self._check_table(table)
        if BIAS_COLUMN not in columns:
            n = self._one(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))[0]
            return int(n), int(n)
        row = self._one(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE {b} IS NULL) FROM {t}").format(
                b=sql.Identifier(BIAS_COLUMN), t=sql.Identifier(table)
            )
        )
        return int(row[0]), int(row[1])

    # -- provenance --------------------------------------------------------------------
    def _ensure_meta(self) -> None:
        self.conn.execute(
            self._sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, meta jsonb NOT NULL, "
                "updated timestamptz NOT NULL DEFAULT now())"
            ).format(self._sql.Identifier(META_TABLE))
        )

    def read_meta(self, table: str) -> dict | None:
        if not self.exists(META_TABLE):
            return None
        row = self._one(
            self._sql.SQL("SELECT meta FROM {} WHERE table_name = %s").format(self._sql.Identifier(META_TABLE)),
            (table,),
        )
        if row is None:
            return None
        return row[0] if isinstance(row[0], dict) else json.loads(row[0])

    def _write_meta(self, table: str, meta: dict) -> None:
        self._ensure_meta()
        self.conn.execute(
            self._sql.SQL(
                "INSERT INTO {} (table_name, meta, updated) VALUES (%s, %s::jsonb, now()) "
                "ON CONFLICT (table_name) DO UPDATE SET meta = EXCLUDED.meta, updated = now()"
            ).format(self._sql.Identifier(META_TABLE)),
            (table, json.dumps(meta)),
        )

    # -- transactions and locks -------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            with self.conn.transaction():
                yield
        except self._psycopg.errors.QueryCanceled:
            raise InputError(f"{self.label}: no answer within --io-timeout {self.io_timeout:g}s") from None
        except self._psycopg.errors.DiskFull:
            raise OutputError(f"{self.label}: the database server's disk is full; nothing was changed") from None
        except self._psycopg.Error as exc:
            raise InputError(f"{self.label}: {self._msg(exc)}; nothing was changed") from None
        finally:
            with contextlib.suppress(Exception):
                self._timeouts(True)

    @contextlib.contextmanager
    def lock(self, table: str, wait: float) -> Iterator[None]:
        """An advisory lock on ``table`` for the whole read, compute and write; a second run waits ``wait`` s."""
        key = f"nnn:{table}"
        deadline = time.monotonic() + max(0.0, float(wait))
        while not self._one("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))[0]:
            if time.monotonic() >= deadline:
                holder = self._one(
                    "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.objid = (hashtext(%s)::bigint & 4294967295)::oid AND l.granted LIMIT 1",
                    (key,),
                )
                who = f"server pid {holder[0]} ({holder[1]}) since {holder[2]:%Y-%m-%d %H:%M:%S}" if holder else "?"
                raise BusyError(
                    f"{where(self, table)}: another nnn run is writing this table ({who}); waited {wait:g}s: "
                    "try again later or give --wait a longer time"
                )
            time.sleep(0.2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

    # -- sinks -------------------------------------------------------------------------
    def write_table(self, table: str, spec: WriteSpec, mode: str, index: str, store_metric: str, meta: dict) -> None:
        """Export: a new table (``create``), a rewritten one (``replace``) or more rows (``append``), one transaction."""
        sql = self._sql
        exists = self.exists(table)
        if mode == "create" and exists:
            raise ParameterError(f"{where(self, table)}: already exists; give --replace to rewrite it or --append")
        if mode == "append":
            if not exists:
                raise InputError(f"{where(self, table)}: no such table to --append to")
        n, d = spec.vectors.shape
        dd = spec.nnn_vectors.shape[1]
        if table == META_TABLE:
            raise ParameterError(f"{where(self, table)}: this name is nnn's provenance table; choose another")
        target = table if mode == "append" else f"{table[:40]}__nnn_new_{int(time.time() * 1000) % 10**9}"
        t = sql.Identifier(target)
        with self._transaction():
            self._timeouts(False)
            if mode == "append":
                cols = self._columns(table)
                have = self.vector_dim(table, VECTOR_COLUMN, cols)
                if have != dd:
                    raise MismatchError(
                        f"{where(self, table, VECTOR_COLUMN)}: holds vector({have}), the rows need {dd}"
                    )
                old = self._one(
                    sql.SQL("SELECT count(*) FROM {t} WHERE {i} = ANY(%s)").format(t=t, i=sql.Identifier(ID_COLUMN)),
                    ([str(v) for v in spec.ids],),
                )[0]
                if old:
                    raise InputError(f"{where(self, table)}: {old} of the new ids are already in the table")
            else:
                self.conn.execute(
                    sql.SQL(
                        "CREATE TABLE {t} ({i} text PRIMARY KEY, {r} bigint NOT NULL, {e} vector({d}) NOT NULL, "
                        "{b} real NOT NULL, {v} vector({dd}) NOT NULL)"
                    ).format(
                        t=t,
                        i=sql.Identifier(ID_COLUMN),
                        r=sql.Identifier(ROW_COLUMN),
                        e=sql.Identifier(EMBED_COLUMN),
                        b=sql.Identifier(BIAS_COLUMN),
                        v=sql.Identifier(VECTOR_COLUMN),
                        d=sql.Literal(d),
                        dd=sql.Literal(dd),
                    )
                )
                if _inline_fits(d):  # the two vectors beside each other in the row: no TOAST table to fill
                    self.conn.execute(
                        sql.SQL(
                            "ALTER TABLE {t} ALTER COLUMN {e} SET STORAGE PLAIN, ALTER COLUMN {v} SET STORAGE PLAIN"
                        ).format(t=t, e=sql.Identifier(EMBED_COLUMN), v=sql.Identifier(VECTOR_COLUMN))
                    )
                for name in spec.columns:
                    self.conn.execute(
                        sql.SQL("ALTER TABLE {t} ADD COLUMN {c} text").format(t=t, c=sql.Identifier(name))
                    )
            self._copy_export(t, spec, freeze=mode != "append")
            if spec.columns:
                self._fill_columns(t, spec)
            if mode != "append":
                if index != "none":
                    self._create_index(target, table, index, store_metric, n)
                if exists:
                    self.conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
                self.conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(t, sql.Identifier(table)))
                self._rename_constraints(table, target)
            self._write_meta(table, meta)

    def _rename_constraints(self, table: str, target: str) -> None:
        """The constraints (and the primary key's index) named after the temporary table take the table's name."""
        sql = self._sql
        for (name,) in self.conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s)",
            (sql.Identifier(table).as_string(self.conn),),
        ).fetchall():
            if name.startswith(target):
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {}").format(
                        sql.Identifier(table), sql.Identifier(name), sql.Identifier((table + name[len(target) :])[:63])
                    )
                )

    def _create_index(self, target: str, table: str, index: str, store_metric: str, n: int) -> None:
        sql = self._sql
        ops = "vector_ip_ops" if store_metric == "ip" else "vector_l2_ops"
        name = sql.Identifier(f"{table[:40]}_nnn_{index}_{int(time.time() * 1000) % 10**6}")
        if index == "hnsw":
            q = sql.SQL("CREATE INDEX {n} ON {t} USING hnsw ({v} {o})")
        else:
            lists = max(1, min(4096, int(math.sqrt(max(n, 1)))))
            q = sql.SQL("CREATE INDEX {n} ON {t} USING ivfflat ({v} {o}) WITH (lists = " + str(lists) + ")")
        self.conn.execute(q.format(n=name, t=sql.Identifier(target), v=sql.Identifier(VECTOR_COLUMN), o=sql.SQL(ops)))

    def _copy_export(self, t, spec: WriteSpec, freeze: bool = False) -> None:
        """The rows by binary COPY; ``freeze`` for a table created in this transaction (its rows are written
        frozen: no later pass of VACUUM rewrites every page to set hint bits)."""
        sql = self._sql
        n, d = spec.vectors.shape
        dd = spec.nnn_vectors.shape[1]
        rec = np.dtype(
            [("fields", ">i2"), ("r_len", ">i4"), ("r", ">i8")]
            + _vector_field(1, d)
            + [("b_len", ">i4"), ("b", ">f4")]
            + _vector_field(2, dd)
        )
        options = "FORMAT BINARY, FREEZE" if freeze else "FORMAT BINARY"
        query = sql.SQL("COPY {t} ({r}, {e}, {b}, {v}, {i}) FROM STDIN (" + options + ")").format(
            t=t,
            r=sql.Identifier(ROW_COLUMN),
            e=sql.Identifier(EMBED_COLUMN),
            b=sql.Identifier(BIAS_COLUMN),
            v=sql.Identifier(VECTOR_COLUMN),
            i=sql.Identifier(ID_COLUMN),
        )
        block = 8192
        with self.conn.cursor() as cur, cur.copy(query) as copy:
            copy.write(_COPY_HEADER)
            for lo in range(0, n, block):
                hi = min(n, lo + block)
                arr = np.empty(hi - lo, dtype=rec)
                arr["fields"] = 5
                arr["r_len"] = 8
                arr["r"] = np.arange(lo, hi, dtype=np.int64) + spec.row_offset
                _fill_vector(arr, "1", spec.vectors[lo:hi])
                arr["b_len"] = 4
                arr["b"] = spec.bias[lo:hi]
                _fill_vector(arr, "2", spec.nnn_vectors[lo:hi])
                copy.write(_interleave(arr, [str(v).encode("utf-8") for v in spec.ids[lo:hi]]))
            copy.write(_COPY_TRAILER)

    def _fill_columns(self, t, spec: WriteSpec) -> None:
        sql = self._sql
        names = list(spec.columns)
        self.conn.execute("CREATE TEMP TABLE nnn_cols (id text, vals text[]) ON COMMIT DROP")
        with self.conn.cursor() as cur, cur.copy("COPY nnn_cols (id, vals) FROM STDIN") as copy:
            for i, key in enumerate(spec.ids):
                copy.write_row(
                    [str(key), [None if spec.columns[c][i] is None else str(spec.columns[c][i]) for c in names]]
                )
        sets = sql.SQL(", ").join(
            sql.SQL("{} = c.vals[{}]").format(sql.Identifier(name), sql.Literal(j + 1)) for j, name in enumerate(names)
        )
        self.conn.execute(
            sql.SQL("UPDATE {t} SET {s} FROM nnn_cols c WHERE {t}.{i} = c.id").format(
                t=t, s=sets, i=sql.Identifier(ID_COLUMN)
            )
        )

    def bias_writer(self, table: str, id_column: str | None, dim: int, k: int | None) -> PgBiasWriter:
        """A writer of in-place biases by blocks: each block COPYed into a temporary staging table of this
        session; at :meth:`PgBiasWriter.commit` the columns are added and one ``UPDATE ... FROM`` sets every row,
        in one transaction (the table changes at its commit, or not at all)."""
        return PgBiasWriter(self, table, id_column, dim, k)

    # -- queries ----------------------------------------------------------------------------
    def _effort_settings(self, effort: SearchEffort, top_k: int) -> list[tuple[str, str]]:
        """The ``SET LOCAL`` settings for ``effort``: ``hnsw.ef_search`` (at least ``top_k``: an HNSW scan
        returns at most ef rows) and ``ivfflat.probes``; ``--exact`` turns index scans off, so the planner
        scans and sorts every row."""
        if effort.exact:
            return [("enable_indexscan", "off"), ("enable_bitmapscan", "off")]
        if effort.ef_search is None:
            return []
        ef = max(effort.ef_search, top_k)
        if ef > PG_MAX_EF_SEARCH:
            raise ParameterError(
                f"--ef-search {ef}{' (raised to --top-k)' if ef > effort.ef_search else ''}: pgvector's "
                f"hnsw.ef_search allows at most {PG_MAX_EF_SEARCH}"
            )
        return [("hnsw.ef_search", str(ef)), ("ivfflat.probes", str(effort.ef_search))]

    def search(
        self, table: str, queries: np.ndarray, top_k: int, meta: dict, effort: SearchEffort | None = None
    ) -> StoreHits:
        sql = self._sql
        store_metric = meta.get("store_metric", "ip")
        key = meta.get("id_column") or ID_COLUMN
        columns = self._check_table(table)
        if VECTOR_COLUMN not in columns:
            raise InputError(f"{where(self, table)}: has no {VECTOR_COLUMN} column; run nnn bias --in-place first")
        has_row = ROW_COLUMN in columns
        op = sql.SQL("<#>" if store_metric == "ip" else "<->")
        q = query_rows(queries, store_metric)
        query = sql.SQL(
            "SELECT {k}::text, {r}, {v} {op} %s::vector AS d FROM {t} ORDER BY {v} {op} %s::vector LIMIT %s"
        ).format(
            k=sql.Identifier(key),
            r=sql.Identifier(ROW_COLUMN) if has_row else sql.SQL("-1"),
            v=sql.Identifier(VECTOR_COLUMN),
            op=op,
            t=sql.Identifier(table),
        )
        ids = np.empty((len(q), top_k), dtype=object)
        rows = np.full((len(q), top_k), -1, dtype=np.int64)
        dist = np.full((len(q), top_k), np.nan, dtype=np.float64)
        got = top_k
        settings = self._effort_settings(effort or SearchEffort(), top_k)
        try:
            with self.conn.transaction():  # SET LOCAL: the knobs end with the search
                for name, value in settings:
                    self.conn.execute(sql.SQL("SET LOCAL {} = {}").format(sql.SQL(name), sql.Literal(value)))
                for i, vec in enumerate(q):
                    text = "[" + ",".join(repr(float(x)) for x in vec) + "]"
                    res = self.conn.execute(query, (text, text, top_k)).fetchall()
                    got = min(got, len(res))
                    for j, (ident, row, dval) in enumerate(res):
                        ids[i, j], rows[i, j], dist[i, j] = ident, row, dval
        except self._psycopg.errors.QueryCanceled:
            raise InputError(f"{self.label}: no answer within --io-timeout {self.io_timeout:g}s") from None
        except self._psycopg.Error as exc:
            raise InputError(f"{where(self, table)}: cannot search ({self._msg(exc)})") from None
        ids, rows, dist = ids[:, :got], rows[:, :got], dist[:, :got]
        if store_metric == "ip":
            scores = (-dist).astype(np.float32)
        else:
            scores = score_from_l2(dist, q, float(meta["l2_max_norm"]))
        return StoreHits(ids, rows, scores)


class PgBiasWriter:
    """In-place biases of one table, written block by block into a staging table and committed at once."""

    def __init__(self, store: PgVectorStore, table: str, id_column: str | None, dim: int, k: int | None):
        sql = store._sql
        columns = store._check_table(table)
        self.store, self.table, self.dim, self.k = store, table, int(dim), k
        self.key = store._key(table, id_column, columns)
        self.key_type = columns[self.key]
        if VECTOR_COLUMN in columns and store.vector_dim(table, VECTOR_COLUMN, columns) != self.dim:
            raise MismatchError(
                f"{where(store, table, VECTOR_COLUMN)}: holds another dimension than the {self.dim} this run writes; "
                "drop the nnn_ columns to start over"
            )
        self.stage = f"nnn_stage_{os.getpid()}_{next(_STAGES)}"
        self.rows = 0
        topk = sql.SQL(", k real[]") if k else sql.SQL("")
        with store._transaction():
            store.conn.execute(
                sql.SQL("CREATE TEMP TABLE {s} (b real, v vector({d}){k}, id text)").format(
                    s=sql.Identifier(self.stage), d=sql.Literal(self.dim), k=topk
                )
            )
        fields = [("fields", ">i2"), ("b_len", ">i4"), ("b", ">f4")] + _vector_field(2, self.dim)
        if k:
            fields += [("k_len", ">i4"), ("k_ndim", ">i4"), ("k_null", ">i4"), ("k_oid", ">i4"), ("k_dim", ">i4"),
                       ("k_lb", ">i4"), ("k_vals", [("len", ">i4"), ("v", ">f4")], (k,))]  # fmt: skip
        self.rec = np.dtype(fields)

    def put(self, ids: np.ndarray, bias: np.ndarray, nnn_vectors: np.ndarray, topk: np.ndarray | None) -> None:
        """One block into the staging table by binary COPY (the table itself is not touched)."""
        store, k, n = self.store, self.k, len(ids)
        cols = "b, v, k, id" if k else "b, v, id"
        query = store._sql.SQL("COPY {} (" + cols + ") FROM STDIN (FORMAT BINARY)").format(
            store._sql.Identifier(self.stage)
        )
        with store._transaction(), store.conn.cursor() as cur, cur.copy(query) as copy:
            copy.write(_COPY_HEADER)
            for lo in range(0, n, 8192):
                hi = min(n, lo + 8192)
                arr = np.empty(hi - lo, dtype=self.rec)
                arr["fields"] = 4 if k else 3
                arr["b_len"] = 4
                arr["b"] = bias[lo:hi]
                _fill_vector(arr, "2", nnn_vectors[lo:hi])
                if k:
                    assert topk is not None
                    arr["k_len"], arr["k_ndim"], arr["k_null"], arr["k_oid"] = 20 + 8 * k, 1, 0, _FLOAT4_OID
                    arr["k_dim"], arr["k_lb"] = k, 1
                    arr["k_vals"]["len"] = 4
                    arr["k_vals"]["v"] = topk[lo:hi]
                copy.write(_interleave(arr, [str(v).encode("utf-8") for v in ids[lo:hi]]))
            copy.write(_COPY_TRAILER)
        self.rows += n

    def commit(self, meta: dict) -> None:
        """Columns added if missing, every staged row set by one ``UPDATE ... FROM``, the provenance written:
        one transaction."""
        store, sql = self.store, self.store._sql
        t = sql.Identifier(self.table)
        with store._transaction():
            store._timeouts(False)
            store.conn.execute(
                sql.SQL(
                    "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {b} real, ADD COLUMN IF NOT EXISTS {v} vector({dd}), "
                    "ADD COLUMN IF NOT EXISTS {k} real[]"
                ).format(
                    t=t,
                    b=sql.Identifier(BIAS_COLUMN),
                    v=sql.Identifier(VECTOR_COLUMN),
                    k=sql.Identifier(TOPK_COLUMN),
                    dd=sql.Literal(self.dim),
                )  # fmt: skip
            )
            updated = store.conn.execute(
                sql.SQL(
                    "UPDATE {t} SET {b} = n.b, {v} = n.v, {k} = {kv} FROM {s} n WHERE {t}.{key} = n.id::{kt}"
                ).format(
                    t=t,
                    b=sql.Identifier(BIAS_COLUMN),
                    v=sql.Identifier(VECTOR_COLUMN),
                    k=sql.Identifier(TOPK_COLUMN),
                    kv=sql.SQL("n.k" if self.k else "NULL"),
                    s=sql.Identifier(self.stage),
                    key=sql.Identifier(self.key),
                    kt=sql.SQL(self.key_type),
                )  # fmt: skip
            ).rowcount
            if updated != self.rows:
                raise InputError(
                    f"{where(store, self.table)}: {self.rows - updated} rows vanished while the biases were computed"
                )
            store._write_meta(self.table, meta)
            store.conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(self.stage)))

    def abort(self) -> None:
        """The staging table dropped; the table was never touched."""
        with contextlib.suppress(Exception):
            self.store.conn.execute(
                self.store._sql.SQL("DROP TABLE IF EXISTS {}").format(self.store._sql.Identifier(self.stage))
            )


_STAGES = itertools.count()
