"""Gallery labels for attribute bias: a ``.npy`` of 1/0/-1, or a csv/tsv of ``id,label``."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from nnn_cli.core.attribute import LABEL_A, LABEL_B, LABEL_NONE
from nnn_cli.data.npy import load_npy
from nnn_cli.errors import InputError, ParameterError


def check_explicit_groups(labels_spec: str | os.PathLike, a: str | None, b: str | None) -> None:
    """Refuse csv/tsv labels without both ``--group-a`` and ``--group-b``.

    Taking the two label values in sorted order would make the sign of the
    bias an accident of spelling (``female`` < ``male``).  ``.npy`` labels
    already say which rows are a (1) and b (0).
    """
    if Path(labels_spec).suffix.lower() in (".csv", ".tsv") and (a is None or b is None):
        raise ParameterError(
            "name both groups with --group-a and --group-b (the bias is #a - #b, so its sign "
            "depends on which label is a; e.g. --group-a male --group-b female as in the paper)"
        )


def read_labels(
    spec: str | os.PathLike,
    n_gallery: int,
    gallery_ids: np.ndarray | None = None,
    a: str | None = None,
    b: str | None = None,
) -> tuple[np.ndarray, str, str]:
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
            raise InputError(
                f"{path}: labels must be a 1-D array of {n_gallery} entries (one per gallery row), got shape {arr.shape}"
            )
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
            raise ParameterError(
                f"{path}: holds {len(values)} label values ({', '.join(values[:5])}); "
                "name the two groups with --group-a and --group-b"
            )
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
