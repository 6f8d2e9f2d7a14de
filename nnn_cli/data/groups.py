"""Reading query groups and paired id files (csv/tsv) for the paper's protocol.

Kept apart from the math (:mod:`nnn_cli.core.attribute`, :mod:`nnn_cli.core.protocol`),
which takes plain arrays.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from nnn_cli.errors import InputError


def _rows(path: Path, columns: tuple[str, str], what: str) -> list[tuple[str, str]]:
    if not path.exists():
        raise InputError(f"{path}: no such file ({what})")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv"):
        raise InputError(f"{path}: {what} must be a .csv or .tsv with header {','.join(columns)}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
        if not reader.fieldnames or not set(columns) <= set(reader.fieldnames):
            raise InputError(f"{path}: needs a header with columns {' and '.join(repr(c) for c in columns)}")
        rows = [(r[columns[0]], r[columns[1]]) for r in reader]
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def read_query_groups(
    spec: str | os.PathLike, n_queries: int, query_ids: np.ndarray | None = None
) -> tuple[np.ndarray, list[str]]:
    """((Q,) int64 group index of each query, -1 = none; group names, sorted).

    ``.csv``/``.tsv`` with header ``id,group`` (e.g. ``group`` = occupation); ids
    are the query file's ids, or row numbers when it has none.  A query listed
    twice with different groups is an error; unlisted queries get -1.
    """
    path = Path(spec)
    rows = _rows(path, ("id", "group"), "the query groups")
    table = (
        {str(v): i for i, v in enumerate(query_ids)} if query_ids is not None else {str(i): i for i in range(n_queries)}
    )
    unknown = [i for i, _ in rows if i not in table]
    if unknown:
        raise InputError(f"{path}: unknown query id {unknown[0]!r} ({len(unknown)} unknown in all)")
    names = sorted({g for _, g in rows})
    code = {g: i for i, g in enumerate(names)}
    groups = np.full(n_queries, -1, dtype=np.int64)
    seen: dict[int, int] = {}
    for item, g in rows:
        row = table[item]
        if seen.get(row, code[g]) != code[g]:
            raise InputError(f"{path}: query {item!r} is listed in two groups")
        seen[row] = code[g]
        groups[row] = code[g]
    return groups, names


def read_pairs(
    spec: str | os.PathLike, columns: tuple[str, str] = ("image_id", "caption_id")
) -> tuple[np.ndarray, np.ndarray]:
    """Two (P,) str arrays from a csv/tsv of id pairs (default header ``image_id,caption_id``)."""
    rows = _rows(Path(spec), columns, "the paired ids")
    return np.array([a for a, _ in rows], dtype=str), np.array([b for _, b in rows], dtype=str)
