"""Small input tables: ground truth (npy, h5, csv/tsv of ids) and parameter files from `nnn tune`."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from nnn_cli.core.baselines import BaselineParams
from nnn_cli.core.truth import Truth
from nnn_cli.data.h5 import is_h5_path, open_h5_safe, short_error, split_spec
from nnn_cli.data.npy import load_npy
from nnn_cli.errors import InputError


def read_truth(
    spec: str | os.PathLike,
    n_queries: int,
    n_gallery: int,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
) -> Truth:
    """Read ground truth from ``.npy``, ``.h5`` (dataset ``truth``) or ``.csv``/``.tsv`` of ids."""
    path, dataset = split_spec(spec, "truth")
    if not path.exists():
        raise InputError(f"{path}: no such file (the ground truth)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = load_npy(path, "ground-truth")
    elif is_h5_path(path):
        with open_h5_safe(path, "ground-truth file") as f:
            if dataset not in f:
                raise InputError(f"{path}: no dataset {dataset!r}")
            arr = f[dataset][()]
    elif suffix in (".csv", ".tsv"):
        return _read_truth_table(path, n_queries, n_gallery, query_ids, gallery_ids)
    else:
        raise InputError(f"{path}: unknown ground-truth file type; use .npy, .h5 or .csv/.tsv")
    return Truth.from_array(arr, n_queries, n_gallery, str(path))


def _read_truth_table(
    path: Path, n_queries: int, n_gallery: int, query_ids: np.ndarray | None, gallery_ids: np.ndarray | None
) -> Truth:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            if not reader.fieldnames or not {"query", "gallery"} <= set(reader.fieldnames):
                raise InputError(f"{path}: needs a header with columns 'query' and 'gallery'")
            rows = [(r["query"], r["gallery"]) for r in reader]
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save the table as UTF-8") from None
    except csv.Error as exc:
        raise InputError(f"{path}: not a valid {'TSV' if delimiter == chr(9) else 'CSV'} table ({exc})") from None
    if any(r[0] is None or r[1] is None for r in rows):
        raise InputError(f"{path}: a row has fewer than two columns")
    if not rows:
        raise InputError(f"{path}: no (query, gallery) rows")

    def lookup(values, ids, n, side):
        if ids is None:
            try:
                return np.asarray([int(v) for v in values], dtype=np.int64)
            except ValueError:
                raise InputError(f"{path}: the {side} file has no ids, so {side} values must be row numbers") from None
        table: dict[str, int] = {}
        for i, v in enumerate(ids):
            if str(v) in table:
                raise InputError(
                    f"{path}: the {side} file's id {str(v)!r} appears twice (rows {table[str(v)]} "
                    f"and {i}), so the table's ids are ambiguous; make the ids unique"
                )
            table[str(v)] = i
        missing = [v for v in values if v not in table]
        if missing:
            raise InputError(f"{path}: unknown {side} id {missing[0]!r} ({len(missing)} unknown in all)")
        return np.asarray([table[v] for v in values], dtype=np.int64)

    q = lookup([r[0] for r in rows], query_ids, n_queries, "query")
    g = lookup([r[1] for r in rows], gallery_ids, n_gallery, "gallery")
    return Truth.from_array(np.stack([q, g], axis=1), n_queries, n_gallery, str(path))


# ---------------------------------------------------------------------------
# Parameter files (written by `nnn tune`)
# ---------------------------------------------------------------------------
def read_params(path: str | os.PathLike) -> dict:
    """Read a params JSON file with at least ``alpha`` and ``k``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file (the params)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({short_error(exc)})") from None
    if not isinstance(data, dict) or "alpha" not in data or "k" not in data:
        raise InputError(f"{path}: expected a JSON object with 'alpha' and 'k' (as written by `nnn tune`)")
    alpha, k = data["alpha"], data["k"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
        raise InputError(f"{path}: 'alpha' must be a finite number, got {alpha!r}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not float(k).is_integer() or k < 1:
        raise InputError(f"{path}: 'k' must be a positive integer, got {k!r}")
    alpha, k = float(alpha), int(k)
    return {**data, "alpha": alpha, "k": k}


def read_method_params(paths, params: BaselineParams) -> BaselineParams:
    """``params`` with the best values of ``nnn tune --method`` JSON files (``{"method", "best": {...}}``) put in."""
    known = {f.name for f in fields(BaselineParams)}
    for path in paths or ():
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such file (method params from `nnn tune --method`)") from None
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable JSON file ({exc})") from None
        best = doc.get("best") if isinstance(doc, dict) else None
        if not isinstance(best, dict) or not best or not set(best) <= known:
            raise InputError(
                f'{path}: expected {{"method": ..., "best": {{...}}}} as written by `nnn tune --method`'
                f" with keys among {', '.join(sorted(known))}"
            )
        try:
            values: dict[str, Any] = {key: float(value) for key, value in best.items()}
            params = replace(params, **values)
        except (TypeError, ValueError):
            raise InputError(f"{path}: the values under 'best' must be numbers") from None
    return params.check()
