"""`nnn export`: a gallery and its bias file into a vector store, as ``[r, b]`` rows any inner-product index serves.

Each row keeps its id, the plain vector (``embedding``), the bias (``nnn_bias``) and ``nnn_vector``
(``[r, b]``, or ``[r, b, sqrt(M^2 - |[r, b]|^2)]`` for an L2 store), so nothing is lost; the store records
the parameters and fingerprints (``nnn info URI --table T``), and ``nnn search --store`` queries it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from nnn_cli._version import __version__
from nnn_cli.data.provenance import now_utc
from nnn_cli.data.stores import open_store
from nnn_cli.data.stores.common import (
    WriteSpec,
    check_index_kind,
    check_store_metric,
    check_unique,
    closing,
    l2_rows,
    nnn_rows,
    where,
)
from nnn_cli.errors import InputError, ParameterError, install_hint
from nnn_cli.jobs.common import JobResult, NoteFn, Notes, PathLike, open_source, read_checked_bias


def export(
    gallery: PathLike,
    bias: PathLike,
    to: str,
    *,
    table: str = "nnn_items",
    index: str = "none",
    store_metric: str = "ip",
    metric: str = "cosine",
    replace: bool = False,
    append: bool = False,
    ids: Optional[PathLike] = None,
    ids_column: Optional[str] = None,
    with_columns: Optional[PathLike] = None,
    force: bool = False,
    io_timeout: float | None = None,
    storage_options: dict | None = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """Write ``gallery`` with the biases of ``bias`` into ``table`` of the store ``to``; returns a summary."""
    notes = Notes(on_note)
    check_store_metric(store_metric)
    check_index_kind(index)
    if replace and append:
        raise ParameterError("give --replace (rewrite the table) or --append (add rows), not both")
    if not table:
        raise ParameterError("--table must not be empty")
    g_src = open_source(gallery, "gallery", notes, ids, ids_column)
    bf = read_checked_bias(bias, g_src, metric, force)
    extra = _read_columns(with_columns, g_src.n) if with_columns is not None else {}
    mode = "append" if append else "replace" if replace else "create"
    with closing(open_store(to, io_timeout=io_timeout, storage_options=storage_options)) as store:
        exists = store.exists(table)
        if mode == "create" and exists:
            raise ParameterError(f"{where(store, table)}: already exists; give --replace to rewrite it or --append")
        old_meta = store.read_meta(table) if mode == "append" else None
        if mode == "append":
            if not exists or old_meta is None:
                raise InputError(f"{where(store, table)}: no table made by nnn export to --append to")
            for key, have in (("metric", metric), ("alpha", bf.attrs.get("alpha")), ("k", bf.attrs.get("k"))):
                if have is not None and old_meta.get(key) is not None and str(old_meta[key]) != str(have):
                    raise ParameterError(
                        f"{where(store, table)}: was made with {key}={old_meta[key]}, this bias file has {have}"
                    )
            store_metric = old_meta.get("store_metric", store_metric)
            if int(old_meta.get("dim", g_src.dim)) != g_src.dim:
                raise InputError(f"{where(store, table)}: holds d={old_meta['dim']}, {g_src.name} has d={g_src.dim}")
        g = g_src.read(metric)
        offset = int(old_meta.get("n_gallery", 0)) if old_meta else 0
        row_ids = g_src.ids()
        if row_ids is None:
            row_ids = np.asarray([str(i) for i in range(offset, offset + g_src.n)], dtype=object)
        check_unique(f"{g_src.name} ids", row_ids)
        rows = nnn_rows(g, bf.bias)
        max_norm = None
        if store_metric == "l2":
            rows, max_norm = l2_rows(rows, old_meta.get("l2_max_norm") if old_meta else None)
        meta = _meta(old_meta, g_src, bf.attrs, store_metric, max_norm, offset, store.label, metric)
        meta.update(_model_attrs(g_src))
        spec = WriteSpec(row_ids, g, bf.bias.astype(np.float32), rows, offset, extra)
        store.write_table(table, spec, mode, index, store_metric, meta)
        label = store.label
    summary = {
        "store": label,
        "table": table,
        "mode": mode,
        "rows": g_src.n,
        "n_gallery": meta["n_gallery"],
        "dim": g_src.dim,
        "store_metric": store_metric,
        "index": index,
        "alpha": meta.get("alpha"),
        "k": meta.get("k"),
        "metric": metric,
    }
    verb = {"create": "wrote", "replace": "rewrote", "append": "appended to"}[mode]
    summary["message"] = (
        f"{verb} {label} table {table!r}: {g_src.n} rows of [r, b] (d={g_src.dim}+1, {store_metric}"
        f"{', index ' + index if index != 'none' else ''}); query it with nnn search --store"
    )
    return JobResult(summary, None, notes.lines)


def _meta(
    old: dict | None, g_src, attrs: dict, store_metric: str, max_norm, offset: int, label: str, metric: str
) -> dict:
    """What the store records: parameters, fingerprints, the history of operations."""
    entry = {
        "op": "append" if old else "export",
        "n_added": g_src.n,
        "source": g_src.name,
        "fingerprint": g_src.fingerprint(),
        "time": now_utc(),
    }
    meta = dict(old or {})
    meta.update(
        {
            "nnn_kind": "store",
            "nnn_version": __version__,
            "mode": "export",
            "column": "embedding",
            "id_column": "id",
            "dim": g_src.dim,
            "alpha": attrs.get("alpha"),
            "k": attrs.get("k"),
            "metric": metric,
            "store_metric": store_metric,
            "n_gallery": offset + g_src.n,
            "reference_path": attrs.get("reference_path"),
            "reference_fingerprint": attrs.get("reference_fingerprint"),
            "n_reference": attrs.get("n_reference"),
            "updated": now_utc(),
        }
    )
    if not old:
        meta["created"] = meta["updated"]
        meta["gallery_fingerprint"] = g_src.fingerprint()
    if max_norm is not None:
        meta["l2_max_norm"] = max_norm
    meta["history"] = list(meta.get("history", [])) + [entry]
    return meta


def _read_columns(path: PathLike, n: int) -> dict[str, list]:
    """``--with-columns``: one record per gallery row from a ``.jsonl`` or ``.parquet`` file, carried as text columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (--with-columns)")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"{path}: reading parquet needs pyarrow: {install_hint('parquet')}") from None
        table = pq.read_table(path)
        records = table.to_pylist()
    else:
        records = []
        try:
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        rec = json.loads(line)
                        if not isinstance(rec, dict):
                            raise InputError(f"{path}: line {lineno} is not a JSON object")
                        records.append(rec)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: not valid JSON lines ({exc})") from None
    if len(records) != n:
        raise InputError(f"{path}: holds {len(records)} records but the gallery has {n} rows")
    names: list[str] = []
    for rec in records:
        for key in rec:
            if key not in names:
                names.append(str(key))
    reserved = {"id", "embedding", "nnn_row", "nnn_bias", "nnn_vector", "nnn_topk"}
    clash = [c for c in names if c in reserved]
    if clash:
        raise InputError(f"{path}: column {clash[0]!r} clashes with a column nnn writes")
    return {c: [None if rec.get(c) is None else str(rec.get(c)) for rec in records] for c in names}


def _model_attrs(g_src) -> dict:
    """The embedding model the gallery records (``nnn embed``'s attributes), for `nnn query --store`."""
    from nnn_cli.embed.query import gallery_model

    attrs = gallery_model(g_src)
    return {key: attrs[key] for key in ("model", "model_kind", "modality", "image_size") if key in attrs}
