"""Ids from parquet metadata (clip-retrieval / img2dataset write ``metadata_N.parquet`` beside the shards).

pyarrow is the optional extra ``parquet`` (from a checkout: ``.venv/bin/pip install -e '.[parquet]'``).
A null id is refused with one line naming the file, the column and the row: an empty string would pass
silently and make two items look alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnn_cli.errors import DependencyError, InputError, MismatchError, install_hint

DEFAULT_ID_COLUMNS = ("image_path", "url", "key", "id", "caption")
PARQUET_HINT = install_hint("parquet")


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DependencyError(f"reading ids from parquet metadata needs pyarrow: {PARQUET_HINT}") from None
    return pq


def parquet_ids(paths: list[Path], column: str | None, n: int, what: str, rows: list[int] | None = None) -> np.ndarray:
    """Ids (object array of str) from ``column`` of the parquet ``paths``, concatenated in order.

    ``column`` None picks the first of :data:`DEFAULT_ID_COLUMNS` present (else the first column).
    ``rows`` (one count per file) is checked against each file's row count; the total must be ``n``.
    """
    pq = _pyarrow_parquet()
    out: list[str] = []
    chosen = column
    for i, path in enumerate(paths):
        try:
            schema = pq.read_schema(path)
        except Exception as exc:
            raise InputError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0][:120]})") from None
        names = list(schema.names)
        if chosen is None:
            chosen = next((c for c in DEFAULT_ID_COLUMNS if c in names), names[0] if names else None)
        if chosen not in names:
            raise InputError(
                f"{path}: no column {chosen!r} (columns: {', '.join(names)}); choose one with --ids-column"
            )
        table = pq.read_table(path, columns=[chosen])
        if rows is not None and table.num_rows != rows[i]:
            raise MismatchError(f"{path}: holds {table.num_rows} rows but its shard holds {rows[i]}")
        column_values = table.column(chosen)
        if column_values.null_count:
            row = next(r for r, v in enumerate(column_values.to_pylist()) if v is None)
            raise InputError(
                f"{path}: column {chosen!r} has {column_values.null_count} null id(s), the first at row {row}; "
                "fill them or choose another column with --ids-column"
            )
        out.extend(str(v) for v in column_values.to_pylist())
    if len(out) != n:
        raise MismatchError(f"{what}: the parquet metadata holds {len(out)} ids but the shards hold {n} rows")
    return np.asarray(out, dtype=object)
