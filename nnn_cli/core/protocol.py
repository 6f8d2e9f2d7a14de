"""The paper's protocol helpers: reference-fraction subsampling, paired truth (the leak check is
:mod:`nnn_cli.core.leak`).

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
