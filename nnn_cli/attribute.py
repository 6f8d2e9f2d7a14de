"""Attribute bias of retrieval (paper Section 3.3): ``(#a - #b) / n`` over each query's top n.

Each gallery item carries a label: group ``a``, group ``b`` or neither (e.g.
perceived gender on VisoGender images); the queries are attribute-neutral
("the doctor and their stethoscope").  Bias 0 means the top-n lists are
balanced on average; the paper reports it at n = 6 and 10 before and after
NNN, beside precision@n (share of the top n that are correct items).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .errors import InputError, ParameterError
from .io import Truth, load_npy
from .search import DebiasedIndex
from .topk import DEFAULT_QUERY_BLOCK

LABEL_A, LABEL_B, LABEL_NONE = 1, 0, -1


def read_labels(spec: str | os.PathLike, n_gallery: int, gallery_ids: np.ndarray | None = None,
                a: str | None = None, b: str | None = None) -> tuple[np.ndarray, str, str]:
    """(labels (N,) int8 of 1 = a / 0 = b / -1 = neither, name of a, name of b).

    ``.npy``: a 1-D integer array of 1, 0, -1 (a, b, neither), one per gallery row.
    ``.csv``/``.tsv``: header ``id,label``; ids are the gallery file's ids (or row
    numbers when it has none); ``a``/``b`` name the two label values (when both are
    omitted and the file holds exactly two values, they are taken in sorted
    order); other values and unlisted items count as neither.
    """
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{path}: no such file (the gallery labels)")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = load_npy(path, "labels")
        if arr.ndim != 1 or len(arr) != n_gallery:
            raise InputError(f"{path}: labels must be a 1-D array of {n_gallery} entries (one per gallery row), got shape {arr.shape}")
        if arr.dtype.kind not in "iub" or not np.isin(arr, (LABEL_A, LABEL_B, LABEL_NONE)).all():
            raise InputError(f"{path}: .npy labels must be integers 1 (group a), 0 (group b) or -1 (neither)")
        return arr.astype(np.int8), a or "a", b or "b"
    if suffix not in (".csv", ".tsv"):
        raise InputError(f"{path}: unknown labels file type; use .npy (1/0/-1) or .csv/.tsv with header id,label")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
        if not reader.fieldnames or not {"id", "label"} <= set(reader.fieldnames):
            raise InputError(f"{path}: needs a header with columns 'id' and 'label'")
        rows = [(r["id"], r["label"]) for r in reader]
    if not rows:
        raise InputError(f"{path}: no (id, label) rows")
    values = sorted({lab for _, lab in rows})
    if a is None and b is None:
        if len(values) != 2:
            raise ParameterError(f"{path}: holds {len(values)} label values ({', '.join(values[:5])}); "
                                 "name the two groups with --group-a and --group-b")
        a, b = values
    elif a is None or b is None:
        raise ParameterError("give both --group-a and --group-b (or neither, for a file with exactly two values)")
    for name in (a, b):
        if name not in values:
            raise ParameterError(f"{path}: no item has label {name!r} (values: {', '.join(values[:5])})")
    if gallery_ids is not None:
        table = {str(v): i for i, v in enumerate(gallery_ids)}
    else:
        table = {str(i): i for i in range(n_gallery)}
    labels = np.full(n_gallery, LABEL_NONE, dtype=np.int8)
    unknown = [i for i, _ in rows if i not in table]
    if unknown:
        raise InputError(f"{path}: unknown gallery id {unknown[0]!r} ({len(unknown)} unknown in all)")
    for item, lab in rows:
        labels[table[item]] = LABEL_A if lab == a else LABEL_B if lab == b else LABEL_NONE
    return labels, a, b


def attribute_bias(topk: np.ndarray, labels: np.ndarray, n: int) -> float:
    """Mean over queries of ``(#a - #b) / n`` in the first ``n`` columns of ``topk``."""
    if n < 1 or n > topk.shape[1]:
        raise ParameterError(f"n={n} must be between 1 and {topk.shape[1]}")
    top = labels[topk[:, :n]]
    return float(np.mean(((top == LABEL_A).sum(axis=1) - (top == LABEL_B).sum(axis=1)) / n))


def precision_at(topk: np.ndarray, truth: Truth, n: int) -> float:
    """Mean over queries with truth of the share of their top ``n`` that are correct items."""
    pairs = np.unique(np.stack([truth.query, truth.gallery], axis=1), axis=0)
    hits = (topk[pairs[:, 0], :n] == pairs[:, 1][:, None]).any(axis=1)
    per_query = np.bincount(pairs[:, 0], weights=hits, minlength=truth.n_queries)
    has = truth.has_truth()
    return float(np.mean(per_query[has] / n)) if has.any() else 0.0


def compare_attribute_bias(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray, bias: np.ndarray,
                           ns=(6, 10), truth: Truth | None = None,
                           block_rows: int = DEFAULT_QUERY_BLOCK) -> dict:
    """Bias (and precision@n with ``truth``) of the top n before and after NNN, for each n in ``ns``."""
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ParameterError("--n values must be integers >= 1")
    if ns[-1] > len(gallery):
        raise ParameterError(f"n={ns[-1]} is larger than the gallery ({len(gallery)} items)")
    if len(labels) != len(gallery):
        raise ParameterError(f"{len(labels)} labels for {len(gallery)} gallery items")
    rankings = {"baseline": DebiasedIndex(gallery).search(queries, ns[-1], block_rows)[1],
                "nnn": DebiasedIndex(gallery, bias).search(queries, ns[-1], block_rows)[1]}
    out: dict = {"at": {}}
    for n in ns:
        rec = {}
        for name, topk in rankings.items():
            rec[name] = {"bias": attribute_bias(topk, labels, n)}
            if truth is not None:
                rec[name]["precision"] = precision_at(topk, truth, n)
        out["at"][str(n)] = rec
    out["n_label_a"] = int((labels == LABEL_A).sum())
    out["n_label_b"] = int((labels == LABEL_B).sum())
    return out
