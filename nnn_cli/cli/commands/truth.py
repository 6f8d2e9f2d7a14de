"""`nnn truth-from-pairs`."""

from pathlib import Path
from typing import Annotated

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import handle_errors
from nnn_cli.cli.options import JsonOpt, QuietOpt
from nnn_cli.cli.render import info, print_json

EPILOG = (
    "Example:\n\n"
    "  nnn truth-from-pairs --pairs pairs.csv --images images.h5 --captions captions.h5 -o truth/\n\n"
    "  nnn eval -Q captions.h5 -g images.h5 -t truth/text_to_image_truth.npy --bias bias.h5"
)


@handle_errors
def truth_cmd(
    pairs: Annotated[
        Path, typer.Option("--pairs", help="csv/tsv with header image_id,caption_id: one row per correct pair.")
    ],
    images: Annotated[str, typer.Option("--images", help="Image embeddings with ids (.h5 from `nnn embed`).")],
    captions: Annotated[str, typer.Option("--captions", help="Caption embeddings with ids.")],
    output_dir: Annotated[
        Path,
        typer.Option("--output", "-o", help="Existing folder for text_to_image_truth.npy and image_to_text_truth.npy."),
    ],
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Both directions' **ground truth from one paired file** (text->image and image->text, (P, 2) row pairs)."""
    result = jobs.truth_from_pairs(pairs, images, captions, output_dir)
    if json_out:
        print_json({key: v for key, v in result.summary.items() if key != "message"})
    info(result.summary["message"], quiet)
