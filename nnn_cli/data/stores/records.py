"""What a store records and how it is checked: the provenance of an export or an in-place run (``nnn_meta``,
table metadata, collection payload), the stale guard, the recorded parameters ``--only-new`` and
``--reference-add`` must agree with, and the ``--with-columns`` file an export carries along.

Plain dictionaries and sources in, dictionaries out: no store kind is named here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from nnn_cli._version import __version__
from nnn_cli.data.provenance import check_matches_parts, combined_fingerprint, now_utc, part_record, same_number
from nnn_cli.data.stores.common import BIAS_COLUMN, VectorStore, where
from nnn_cli.errors import InputError, MismatchError, ParameterError, install_hint

RESERVED_COLUMNS = {"id", "embedding", "nnn_row", "nnn_bias", "nnn_vector", "nnn_topk"}


@dataclass(frozen=True)
class Target:
    """The table (collection) of a store and the columns an in-place run reads: the vectors and the row key."""

    table: str
    column: str = "embedding"
    id_column: Optional[str] = None


def checked_meta(store: VectorStore, table: str, metric: str, force: bool) -> dict:
    """The store's provenance, refused (unless ``force``) when rows were added or removed since the biases were
    computed, or the metric differs: the stale guard of a bias file, for a store."""
    meta = store.read_meta(table)
    if meta is None:
        raise InputError(
            f"{where(store, table)}: holds no nnn provenance; write it with nnn export or nnn bias --in-place"
        )
    n, missing = store.counts(table)
    if missing and not force:
        raise MismatchError(
            f"{where(store, table)}: {missing} of {n} rows have no {BIAS_COLUMN} (added since the last run): "
            "run nnn bias URI --table T --in-place --only-new, or pass --force"
        )
    if n != int(meta.get("n_gallery", n)) and not force:
        raise MismatchError(
            f"{where(store, table)}: holds {n} rows but its biases were computed for {meta['n_gallery']}: "
            "recompute them, or pass --force"
        )
    if meta.get("metric") != metric and not force:
        raise MismatchError(
            f"{where(store, table)}: was made with --metric {meta.get('metric')}, but this run uses --metric {metric}; "
            f"pass --metric {meta.get('metric')} or --force"
        )
    return meta


def check_dim(meta: dict, dim: int, what: str, place: str) -> None:
    """``what`` (queries, a model's vectors) must have the dimension the store records."""
    if int(meta.get("dim") or dim) != dim:
        raise MismatchError(f"{what} has d={dim} but {place} holds d={meta['dim']}")


def recorded_params(
    store: VectorStore, target: Target, meta: dict | None, alpha: Any, k: Any, metric: str, r_src: Any
) -> tuple[float, int, str]:
    """``--only-new`` uses what the first run recorded; what is given must agree, and so must the reference."""
    place = where(store, target.table)
    if meta is None or meta.get("mode") != "in-place":
        raise InputError(f"{place}: no earlier nnn bias --in-place run recorded; run once without --only-new")
    for key, have in (("alpha", alpha), ("k", k)):
        if have is not None and not same_number(have, meta[key]):
            raise ParameterError(f"{place}: was made with {key}={meta[key]}, not {have}; drop --{key}/--params")
    if metric != meta["metric"]:
        raise ParameterError(f"{place}: was made with --metric {meta['metric']}, not {metric}")
    if meta.get("column") != target.column:
        raise ParameterError(f"{place}: was made from column {meta.get('column')!r}, not {target.column!r}")
    hint = "give that reference (all its parts, in order), or recompute every row without --only-new"
    check_matches_parts(meta, "reference", r_src, place, hint)
    return float(meta["alpha"]), int(meta["k"]), str(meta["metric"])


def in_place_meta(
    old: dict | None, store: VectorStore, target: Target, g_src: Any, r_src: Any, alpha: float, k: int, metric: str
) -> dict:
    """The provenance of an in-place run (``old``: the record an ``--only-new`` run extends)."""
    entry = {"op": "only-new" if old else "in-place", "n_added": g_src.n, "fingerprint": g_src.fingerprint()}
    meta = dict(old or {})
    meta.update(
        {
            "nnn_kind": "store", "nnn_version": __version__, "mode": "in-place", "column": target.column,
            "id_column": target.id_column or store.row_key(target.table), "dim": g_src.dim, "alpha": alpha, "k": k,
            "metric": metric, "store_metric": "ip",
            "n_gallery": (int(meta.get("n_gallery", 0)) if old else 0) + g_src.n,
            "reference_path": r_src.name, "reference_fingerprint": r_src.fingerprint(),
            "reference_parts": [part_record(r_src)], "n_reference": r_src.n, "updated": now_utc(),
        }
    )  # fmt: skip
    meta.setdefault("created", meta["updated"])
    meta["history"] = list(meta.get("history", [])) + [{**entry, "time": now_utc()}]
    return meta


def reference_add_parts(store: VectorStore, target: Target, meta: dict | None, metric: str, new_src: Any) -> list:
    """The recorded reference parts ``--reference-add`` grows, after checking the run and the new part."""
    place = where(store, target.table)
    if meta is None or meta.get("mode") != "in-place":
        raise InputError(f"{place}: no earlier nnn bias --in-place run recorded to add to")
    if metric != meta["metric"] or target.column != meta.get("column"):
        raise ParameterError(
            f"{place}: was made from column {meta.get('column')!r} with --metric {meta['metric']}; give those"
        )
    parts = list(meta.get("reference_parts") or [])
    if any(p.get("fingerprint") == new_src.fingerprint() for p in parts):
        raise MismatchError(f"{new_src.name}: is already part of the reference of {place} (not added twice)")
    return parts


def reference_add_meta(meta: dict, parts: list, new_src: Any) -> dict:
    """The provenance after ``--reference-add``: one more reference part, its history entry."""
    parts = [*parts, part_record(new_src)]
    meta = dict(meta)
    meta.update(
        {
            "reference_parts": parts,
            "reference_fingerprint": combined_fingerprint(parts),
            "reference_path": " + ".join(str(p["path"]) for p in parts),
            "n_reference": sum(int(p["rows"]) for p in parts),
            "updated": now_utc(),
        }
    )
    entry = {"op": "reference-add", "n_added": new_src.n, "fingerprint": new_src.fingerprint(), "time": now_utc()}
    meta["history"] = list(meta.get("history", [])) + [entry]
    return meta


def check_append(store: VectorStore, table: str, old: dict | None, exists: bool, metric: str, attrs: dict, src: Any):
    """``nnn export --append``: the table was made by nnn export with the same parameters and dimension."""
    if not exists or old is None:
        raise InputError(f"{where(store, table)}: no table made by nnn export to --append to")
    for key, have in (("metric", metric), ("alpha", attrs.get("alpha")), ("k", attrs.get("k"))):
        if have is not None and old.get(key) is not None and str(old[key]) != str(have):
            raise ParameterError(f"{where(store, table)}: was made with {key}={old[key]}, this bias file has {have}")
    if int(old.get("dim", src.dim)) != src.dim:
        raise InputError(f"{where(store, table)}: holds d={old['dim']}, {src.name} has d={src.dim}")


def export_meta(
    old: dict | None, g_src: Any, attrs: dict, store_metric: str, max_norm: Any, offset: int, metric: str
) -> dict:
    """What an export records: parameters, fingerprints, the history of operations."""
    entry = {"op": "append" if old else "export", "n_added": g_src.n, "source": g_src.name}
    meta = dict(old or {})
    meta.update(
        {
            "nnn_kind": "store", "nnn_version": __version__, "mode": "export", "column": "embedding",
            "id_column": "id", "dim": g_src.dim, "alpha": attrs.get("alpha"), "k": attrs.get("k"), "metric": metric,
            "store_metric": store_metric, "n_gallery": offset + g_src.n,
            "reference_path": attrs.get("reference_path"), "reference_fingerprint": attrs.get("reference_fingerprint"),
            "n_reference": attrs.get("n_reference"), "updated": now_utc(),
        }
    )  # fmt: skip
    if not old:
        meta["created"] = meta["updated"]
        meta["gallery_fingerprint"] = g_src.fingerprint()
    if max_norm is not None:
        meta["l2_max_norm"] = max_norm
    meta["history"] = list(meta.get("history", [])) + [{**entry, "fingerprint": g_src.fingerprint(), "time": now_utc()}]
    return meta


def read_columns(path: Any, n: int) -> dict[str, list]:
    """``--with-columns``: one record per gallery row from a ``.jsonl`` or ``.parquet`` file, carried as text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (--with-columns)")
    records = _parquet_records(path) if path.suffix.lower() == ".parquet" else _jsonl_records(path)
    if len(records) != n:
        raise InputError(f"{path}: holds {len(records)} records but the gallery has {n} rows")
    names: list[str] = []
    for rec in records:
        names.extend(str(key) for key in rec if str(key) not in names)
    clash = [c for c in names if c in RESERVED_COLUMNS]
    if clash:
        raise InputError(f"{path}: column {clash[0]!r} clashes with a column nnn writes")
    return {c: [None if rec.get(c) is None else str(rec.get(c)) for rec in records] for c in names}


def _parquet_records(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading parquet needs pyarrow: {install_hint('parquet')}") from None
    return pq.read_table(path).to_pylist()


def _jsonl_records(path: Path) -> list[dict]:
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
    return records


def hit_rows(rows: np.ndarray, hit_ids: np.ndarray, gallery_ids: Any, gallery_name: str, place: str) -> np.ndarray:
    """The gallery rows of a store's hits: the export's row number, or (tables debiased in place) by id."""
    if not (rows < 0).any():
        return rows.copy()
    if gallery_ids is None:
        raise InputError(f"{gallery_name}: has no ids to match the store's rows ({place}) by")
    lookup = {str(v): i for i, v in enumerate(gallery_ids)}
    return np.vectorize(lambda v: lookup.get(str(v), -1), otypes=[np.int64])(hit_ids)


def describe(store: VectorStore, table: str) -> dict:
    """What ``nnn info URI --table T`` shows: the table's rows, rows without a bias, its recorded provenance."""
    if not store.exists(table):
        raise InputError(f"{where(store, table)}: no such table")
    n, missing = store.counts(table)
    meta = store.read_meta(table)
    return {
        "store": store.label,
        "kind": store.kind,
        "table": table,
        "rows": n,
        "rows_without_bias": missing,
        "nnn": meta,
    }
