"""Incremental NNN biases: grow a bias file with new gallery items or new reference queries, exactly.

A bias ``b(r) = alpha * mean(top-k reference scores of r)`` depends on the
reference only through each item's k highest scores.  So:

* new gallery items (``--append-to``) need only their own top-k against the
  reference: cost proportional to the new items;
* new reference queries (``--reference-add``) can only push scores into an
  item's top-k: merging the stored top-k (dataset ``topk``, (N, k) float32,
  descending) with the top-k against the new queries gives the top-k against
  old + new, at cost N x M_new instead of N x M.

Both give what a full recompute gives (the same scores, merged), and record
what was added in the file's ``history`` and ``*_parts`` attributes (see
:mod:`nnn_cli.data.provenance`).
"""

from __future__ import annotations

import numpy as np

from nnn_cli.core.nnn import bias_from_topk, check_k, merge_topk, reference_topk
from nnn_cli.core.topk import DEFAULT_QUERY_BLOCK, ProgressFn
from nnn_cli.data.biasfile import StoredBias
from nnn_cli.data.provenance import (
    check_matches_parts,
    history_entry,
    json_attr,
    now_utc,
    part_record,
    parts_attrs,
    recorded_parts,
    same_number,
)
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.errors import InputError, MismatchError, ParameterError


def _check_options(stored: StoredBias, metric: str, alpha: float | None, k: int | None) -> None:
    name = stored.path
    if metric != stored.metric:
        raise MismatchError(
            f"{name} was computed with --metric {stored.metric}, but this run uses --metric {metric}; "
            f"pass --metric {stored.metric}"
        )
    if alpha is not None and not same_number(alpha, stored.alpha):
        raise MismatchError(
            f"{name} was computed with alpha={stored.alpha}, not {alpha}; "
            "drop --alpha (it is taken from the file) or recompute with `nnn bias`"
        )
    if k is not None and int(k) != stored.k:
        raise MismatchError(
            f"{name} was computed with k={stored.k}, not {k}; "
            "drop --k (it is taken from the file) or recompute with `nnn bias`"
        )


def _check_dim(stored: StoredBias, prefix: str, src: EmbeddingSource) -> None:
    shape = json_attr(stored.attrs, f"{prefix}_shape", None)
    if shape is not None and len(list(shape)) == 2 and int(list(shape)[1]) != src.dim:
        raise MismatchError(
            f"dimension mismatch: {stored.path} was made from {prefix} vectors of d={list(shape)[1]}, "
            f"but {src.name} has d={src.dim}"
        )


def _check_not_added(stored: StoredBias, prefix: str, src: EmbeddingSource) -> None:
    """Refuse to add the same data twice (a cron job re-run): it would count those rows twice."""
    fingerprint = src.fingerprint()
    for part in recorded_parts(stored.attrs, prefix):
        if part["fingerprint"] == fingerprint:
            raise ParameterError(
                f"{src.name}: these {src.n} rows are already part of {stored.path}'s {prefix} "
                f"(added from {part['path']}); nothing to do"
            )


def _updated_attrs(stored: StoredBias, prefix: str, src: EmbeddingSource, op: str) -> dict:
    parts = recorded_parts(stored.attrs, prefix) + [part_record(src)]
    attrs = dict(stored.attrs)
    attrs.update(parts_attrs(prefix, parts, src.dim))
    history = json_attr(stored.attrs, "history", [])
    attrs["history"] = list(history) + [history_entry(op, src)]
    attrs["updated"] = now_utc()
    return attrs


def append_items(
    stored: StoredBias,
    new_items: EmbeddingSource,
    reference: EmbeddingSource,
    metric: str,
    alpha: float | None = None,
    k: int | None = None,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict]:
    """Bias (and top-k) of ``new_items`` against the file's reference, appended to the stored rows.

    ``reference`` must hold the reference recorded in the file (all its parts,
    in order); ``alpha``/``k``/``metric`` must match the file when given.
    Returns ``(bias, topk or None, ids or None, attrs)`` for the grown file.
    """
    _check_options(stored, metric, alpha, k)
    _check_dim(stored, "gallery", new_items)
    _check_dim(stored, "reference", reference)
    check_k(stored.k, reference.n)
    if stored.ids is not None and new_items.ids() is None:
        raise MismatchError(
            f"{stored.path} has gallery ids but {new_items.name} has none; "
            "give the new items an 'ids' dataset (HDF5) so the ids stay aligned"
        )
    check_matches_parts(
        stored.attrs, "reference", reference, str(stored.path), "pass the same --reference the file was computed with"
    )
    items = new_items.read(metric)
    _check_not_added(stored, "gallery", new_items)
    topk_new = reference_topk(items, reference.read(metric), stored.k, block_rows, progress)
    bias_new = bias_from_topk(topk_new, stored.alpha, stored.k)
    bias = np.concatenate([stored.bias, bias_new])
    topk = np.concatenate([stored.topk, topk_new]) if stored.topk is not None else None
    ids = np.concatenate([stored.ids, new_items.ids()]) if stored.ids is not None else None
    return bias, topk, ids, _updated_attrs(stored, "gallery", new_items, "append")


def add_reference(
    stored: StoredBias,
    gallery: EmbeddingSource,
    new_reference: EmbeddingSource,
    metric: str,
    alpha: float | None = None,
    k: int | None = None,
    block_rows: int = DEFAULT_QUERY_BLOCK,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """Every item's bias after adding ``new_reference`` queries to the reference (cost N x M_new).

    ``gallery`` must be the gallery recorded in the file; the file must hold
    ``topk`` (``nnn bias`` stores it unless ``--no-store-topk``).
    Returns ``(bias, topk, ids, attrs)``.
    """
    _check_options(stored, metric, alpha, k)
    if stored.topk is None:
        raise InputError(
            f"{stored.path}: has no 'topk' dataset (made with --no-store-topk or by an older nnn), "
            "so it cannot be updated; recompute it once with `nnn bias` (it stores topk by default)"
        )
    _check_dim(stored, "gallery", gallery)
    _check_dim(stored, "reference", new_reference)
    if gallery.dim != new_reference.dim:
        raise MismatchError(
            f"dimension mismatch: gallery {gallery.name} has d={gallery.dim}, "
            f"new reference {new_reference.name} has d={new_reference.dim}"
        )
    g = gallery.read(metric)
    check_matches_parts(
        stored.attrs, "gallery", gallery, str(stored.path), "pass the gallery the bias file was computed for"
    )
    new_r = new_reference.read(metric)
    _check_not_added(stored, "reference", new_reference)
    k_new = min(stored.k, new_reference.n)
    topk_new = reference_topk(g, new_r, k_new, block_rows, progress)
    topk = merge_topk(stored.topk, topk_new, stored.k)
    bias = bias_from_topk(topk, stored.alpha, stored.k)
    return bias, topk, stored.ids, _updated_attrs(stored, "reference", new_reference, "reference-add")
