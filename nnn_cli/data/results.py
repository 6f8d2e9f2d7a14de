"""Search results: HDF5/npz arrays, or JSON lines (one object per query)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import numpy as np

from nnn_cli.data.h5 import create_h5, is_h5_path, set_attrs, write_strings
from nnn_cli.data.outputs import atomic_output
from nnn_cli.errors import InputError, ParameterError


# ---------------------------------------------------------------------------
def write_results(
    path: str | os.PathLike, indices: np.ndarray, scores: np.ndarray, ids: np.ndarray | None, attrs: dict
) -> Path:
    """Write search results (``indices``, ``scores``, optional ``ids``) atomically to HDF5 or ``.npz``."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                arrays: dict[str, Any] = {"indices": indices.astype(np.int64), "scores": scores.astype(np.float32)}
                if ids is not None:
                    arrays["ids"] = np.asarray(ids, dtype=str)
                np.savez(fh, **arrays)
        return path
    if not is_h5_path(path):
        raise ParameterError(f"{path}: output must end in .h5/.hdf5 or .npz (or use -o - for JSON lines)")
    with atomic_output(path) as tmp:
        with create_h5(tmp) as f:
            f.create_dataset("indices", data=indices.astype(np.int64))
            f.create_dataset("scores", data=scores.astype(np.float32))
            if ids is not None:
                write_strings(f, "ids", ids)
            set_attrs(f, attrs)
    return path


def jsonl_lines(
    scores: np.ndarray, idx: np.ndarray, ids: np.ndarray | None, query_ids: np.ndarray | None
) -> Iterator[str]:
    """One JSON object per query: ``{"query", "query_id"?, "results": [{"rank", "index", "id"?, "score"}]}``."""
    for qi in range(len(idx)):
        results = []
        for rank in range(idx.shape[1]):
            item: dict[str, int | float | str] = {
                "rank": rank + 1,
                "index": int(idx[qi, rank]),
                "score": round(float(scores[qi, rank]), 6),
            }
            if ids is not None:
                item["id"] = str(ids[qi, rank])
            results.append(item)
        rec: dict = {"query": qi}
        if query_ids is not None:
            rec["query_id"] = str(query_ids[qi])
        rec["results"] = results
        yield json.dumps(rec)


def write_jsonl(
    output: str | os.PathLike | TextIO,
    scores: np.ndarray,
    idx: np.ndarray,
    ids: np.ndarray | None,
    query_ids: np.ndarray | None,
) -> None:
    """JSON lines to a text stream (flushed), or atomically to a file.  Scores that overflowed float32
    (``inf`` under ``--metric ip`` with huge rows) are refused before anything is written: JSON has no
    Infinity, and a line with it would break every reader."""
    bad = ~np.isfinite(np.asarray(scores, dtype=np.float64))
    if bad.any():
        qi, rank = (int(v) for v in np.argwhere(bad)[0])
        where = "-o -" if hasattr(output, "write") else str(output)
        raise InputError(
            f"{where}: query {qi}'s rank-{rank + 1} score is {float(np.asarray(scores)[qi, rank])} (the inner products "
            "overflow float32; rows this large come from unnormalised data under --metric ip): JSON cannot hold it; "
            "scale the embeddings down, use --metric cosine, or write -o FILE.h5"
        )
    lines = jsonl_lines(scores, idx, ids, query_ids)
    if hasattr(output, "write"):
        stream = cast(TextIO, output)
        for line in lines:
            stream.write(line + "\n")
        stream.flush()
        return
    with atomic_output(Path(output)) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")
