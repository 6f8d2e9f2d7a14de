"""`nnn truth-from-pairs`: both directions' ground truth from one file of (image id, caption id) pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnn_cli.core.protocol import paired_truth
from nnn_cli.data.groups import read_pairs
from nnn_cli.data.inputs import open_embeddings
from nnn_cli.data.outputs import atomic_output, check_output_path
from nnn_cli.errors import InputError, ParameterError
from nnn_cli.jobs.common import JobResult, PathLike

OUTPUT_NAMES = {"text_to_image": "text_to_image_truth.npy", "image_to_text": "image_to_text_truth.npy"}


def truth_from_pairs(
    pairs: PathLike,
    images: PathLike,
    captions: PathLike,
    output_dir: PathLike,
    columns: tuple[str, str] = ("image_id", "caption_id"),
) -> JobResult:
    """Write ``text_to_image_truth.npy`` (caption row, image row) and ``image_to_text_truth.npy``
    (image row, caption row), (P, 2) int64, into ``output_dir``; ids come from the embedding files."""
    out = Path(output_dir)
    if not out.is_dir():
        raise ParameterError(f"{out}: output folder does not exist (create it first)")
    targets = {key: out / name for key, name in OUTPUT_NAMES.items()}
    for target in targets.values():
        check_output_path(target, [pairs, images, captions], (".npy",), "truth output")
    img_src = open_embeddings(images, "images")
    cap_src = open_embeddings(captions, "captions")
    for src in (img_src, cap_src):
        if src.ids() is None:
            raise InputError(
                f"{src.name}: has no ids; pairs are matched by id (write the file with `nnn embed`, "
                "or add a dataset 'ids')"
            )
    pair_images, pair_captions = read_pairs(pairs, columns)
    truth = paired_truth(pair_images, pair_captions, img_src.ids(), cap_src.ids())
    for key, target in targets.items():
        with atomic_output(target) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, truth[key])
    summary = {
        "pairs": len(pair_images),
        "n_images": img_src.n,
        "n_captions": cap_src.n,
        **{key: str(path) for key, path in targets.items()},
        "message": f"wrote {targets['text_to_image']} and {targets['image_to_text']} "
        f"({len(truth['text_to_image'])} pairs)",
    }
    return JobResult(summary, out)
