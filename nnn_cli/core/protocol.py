"""The paper's protocol helpers: leak check, reference-fraction subsampling, paired truth.

* :func:`leak_check`: tuning (or test) queries that also appear, row for row,
  in the reference set.  NNN's bias then contains the query's own score, and
  tuning picks a cell that will not transfer (on synthetic data a leak moved
  the chosen cell and cost 0.5 R@1).  Warn; refuse under ``--strict``.
* :func:`reference_subsample`: the reference-size ablation (Tables A12-A15:
  NNN with 50%, 20%, 10% of the reference queries), a seeded random subset.
* :func:`paired_truth`: one file of ``(image_id, caption_id)`` pairs gives both
  directions' ground truth (text->image: caption queries, image gallery;
  image->text: image queries, caption gallery).

Math only: arrays in, arrays out (reading files is :mod:`nnn_cli.data.groups`).
"""

from __future__ import annotations

import numpy as np

from nnn_cli.errors import InputError, ParameterError


def _row_keys(x: np.ndarray) -> np.ndarray:
    """One opaque bytes key per row (float32, -0.0 folded into 0.0), for exact row equality."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32) + np.float32(0.0))
    return x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()


def duplicate_rows(queries: np.ndarray, reference: np.ndarray, block_rows: int = 65536) -> np.ndarray:
    """Sorted row indices of ``queries`` that equal some row of ``reference`` exactly (as float32)."""
    if queries.shape[1] != reference.shape[1]:
        raise ParameterError(f"dimension mismatch: queries d={queries.shape[1]}, reference d={reference.shape[1]}")
    ref_keys = np.unique(
        np.concatenate(
            [_row_keys(reference[s : s + block_rows]) for s in range(0, len(reference), block_rows)]
            or [_row_keys(reference)]
        )
    )
    hits = [
        s + np.flatnonzero(np.isin(_row_keys(queries[s : s + block_rows]), ref_keys))
        for s in range(0, len(queries), block_rows)
    ]
    return np.concatenate(hits) if hits else np.zeros(0, dtype=np.int64)


def leak_check(queries: np.ndarray, reference: np.ndarray, strict: bool = False, what: str = "tuning queries") -> dict:
    """``{"n_duplicates", "share", "rows" (first 10), "warning"}``; with ``strict``, a leak raises ParameterError."""
    rows = duplicate_rows(queries, reference)
    n = int(len(rows))
    share = n / max(1, len(queries))
    out = {"n_duplicates": n, "share": share, "rows": rows[:10].tolist(), "warning": None}
    if n:
        out["warning"] = (
            f"{n} of {len(queries)} {what} ({100 * share:.1f}%) also appear in the reference set; "
            "their own scores enter the biases, so tuned settings and recall are optimistic"
        )
        if strict:
            raise ParameterError(out["warning"] + " (--strict)")
    return out


def reference_subsample(n_reference: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded random ``fraction`` of ``n_reference`` rows (at least one row)."""
    if not 0 < fraction <= 1:
        raise ParameterError(f"--reference-fraction must be in (0, 1], got {fraction}")
    if n_reference < 1:
        raise ParameterError("the reference set is empty")
    size = max(1, int(round(fraction * n_reference)))
    if size >= n_reference:
        return np.arange(n_reference)
    return np.sort(np.random.default_rng(seed).choice(n_reference, size=size, replace=False))


def paired_truth(pair_images, pair_captions, image_ids, caption_ids) -> dict[str, np.ndarray]:
    """Both directions' truth, (P, 2) int64 row pairs, from (image_id, caption_id) pairs.

    ``image_ids``/``caption_ids`` are the ids of the image and caption
    embedding files (row order).  Returns ``{"text_to_image": [caption_row,
    image_row], "image_to_text": [image_row, caption_row]}``, each sorted by
    query row, duplicates removed.  Unknown or repeated file ids are errors.
    """
    pair_images = np.asarray(pair_images).astype(str)
    pair_captions = np.asarray(pair_captions).astype(str)
    if pair_images.shape != pair_captions.shape or pair_images.ndim != 1 or len(pair_images) == 0:
        raise InputError("paired ids: need two equal-length, non-empty id lists")

    def rows_of(ids, wanted, what):
        ids = np.asarray(ids).astype(str)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        if len(sorted_ids) > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
            raise InputError(f"the {what} file has repeated ids")
        pos = np.searchsorted(sorted_ids, wanted)
        ok = (pos < len(sorted_ids)) & (sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == wanted)
        if not ok.all():
            bad = wanted[~ok]
            raise InputError(f"paired ids: {what} id {bad[0]!r} is not in the {what} file ({len(bad)} unknown)")
        return order[pos].astype(np.int64)

    img = rows_of(image_ids, pair_images, "image")
    cap = rows_of(caption_ids, pair_captions, "caption")
    t2i = np.unique(np.stack([cap, img], axis=1), axis=0)
    i2t = np.unique(np.stack([img, cap], axis=1), axis=0)
    return {"text_to_image": t2i, "image_to_text": i2t}
