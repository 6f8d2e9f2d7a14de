"""`nnn embed`: raw texts or images through a local model into an embedding file (resumable)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Optional

from nnn_cli.data.locks import DEFAULT_WAIT
from nnn_cli.data.outputs import check_output_path
from nnn_cli.embed.backends import load_text_encoder
from nnn_cli.embed.encoders import set_torch_threads
from nnn_cli.embed.readers import open_input
from nnn_cli.embed.run import EmbedSummary, embed_input
from nnn_cli.embed.store import check_embed_output
from nnn_cli.jobs.common import JobResult, NoteFn, Notes, PathLike, ProgressFn

MAX_SKIP_NOTES = 20


def embed(
    input_path: PathLike,
    output: PathLike,
    *,
    model: Optional[str] = None,
    modality: Optional[str] = None,
    text_column: str = "text",
    id_column: Optional[str] = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    dtype: str = "float32",
    image_size: int = 224,
    restart: bool = False,
    threads: int = 0,
    max_batches: Optional[int] = None,
    input_format: Optional[str] = None,
    output_format: str = "h5",
    stream: BinaryIO | None = None,
    stdin: BinaryIO | None = None,
    wait: float = DEFAULT_WAIT,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    backend: str = "auto",
    quantize: Optional[str] = None,
) -> JobResult:
    """Embed and write ``output`` (``summary`` is `nnn embed --json`'s document; ``summary["_summary"]``
    the :class:`~nnn_cli.embed.run.EmbedSummary`).  A KeyboardInterrupt leaves ``OUT.partial`` to resume from.

    ``input_path="-"`` reads standard input (``stdin``, default the process's) exactly once, as do
    pipes, FIFOs and process substitution; ``output="-"`` writes the finished file's bytes to
    ``stream`` (HDF5 with ids, or ``.npy`` with ``output_format="npy"``) and nothing unless complete.

    ``backend``: ``torch``, ``onnx`` or ``openvino`` (an export made once and cached, see
    :mod:`nnn_cli.embed.export`), or ``auto`` (:func:`~nnn_cli.embed.backends.resolve_backend`);
    ``quantize="int8"`` runs the int8 export (onnx only)."""
    notes = Notes(on_note)
    to_stream = str(output) == "-"
    if to_stream and output_format not in ("h5", "npy"):
        from nnn_cli.errors import ParameterError

        raise ParameterError(f"--output-format must be h5 or npy, got {output_format!r}")
    if not to_stream:
        output = Path(output)
        check_embed_output(output)
        check_output_path(output, [input_path] if str(input_path) != "-" and Path(input_path).is_file() else [])
    source = open_input(input_path, modality, text_column, id_column, input_format=input_format, stdin=stdin)
    t0 = time.perf_counter()
    encoder = load_text_encoder(
        model,
        device,
        precision,
        image_size,
        backend=backend if (source.modality == "text" or backend != "auto") else "torch",
        quantize=quantize,
        threads=threads,
        notes=notes,
    )
    if getattr(encoder, "backend", "torch") == "torch":
        set_torch_threads(threads)
    load_seconds = time.perf_counter() - t0
    skipped: list[str] = []

    def skip(ident: str, reason: str) -> None:
        skipped.append(ident)
        if on_skip is not None:
            on_skip(ident, reason)
        elif len(skipped) <= MAX_SKIP_NOTES:
            notes(f"warning: skipped {ident}: {reason}")

    summary: EmbedSummary = embed_input(
        source,
        encoder,
        output,
        batch_size=batch_size,
        dtype=dtype,
        restart=restart,
        progress=progress,
        on_skip=skip,
        max_batches=max_batches,
        stream=stream,
        stream_format=output_format,
        wait=wait,
    )
    if len(skipped) > MAX_SKIP_NOTES and on_skip is None:
        notes(f"warning: ... and {len(skipped) - MAX_SKIP_NOTES} more skipped")
    result = summary.to_dict()
    result["model_load_seconds"] = round(load_seconds, 3)
    if summary.discarded_partial and summary.discarded_partial != "--restart":
        notes(f"note: started over ({summary.discarded_partial})")
    resumed = f", resumed after {summary.resumed_records} items" if summary.resumed_records else ""
    if not summary.complete:
        message = (
            f"stopped after {summary.encoded_now} items ({summary.n_embedded} rows so far{resumed}); "
            f"rerun the same command to finish {output}"
        )
    else:
        where = "skipped_ids in the file" if to_stream or Path(output).suffix.lower() != ".npy" else f"{output}.json"
        skipped_text = f"; {summary.n_skipped} skipped (see {where})" if summary.n_skipped else ""
        message = (
            f"wrote {'<stdout>' if to_stream else output}: {summary.n_embedded} x {summary.dim} {summary.attrs['modality']} embeddings "
            f"({summary.attrs['model']}, {_how(summary.attrs)}) in {summary.seconds:.1f}s, "
            f"{summary.items_per_second:.1f} items/s{resumed}{skipped_text}"
        )
    return JobResult(
        {**result, "message": message, "_summary": summary},
        Path(output) if summary.complete and not to_stream else None,
        notes.lines,
    )


def _how(attrs: dict) -> str:
    """``cpu``, ``cuda``, ``onnx cpu``, ``onnx int8 cpu``: what ran the model."""
    backend = attrs.get("backend", "torch")
    quant = attrs.get("quantization", "none")
    parts = ([] if backend == "torch" else [backend]) + ([] if quant in (None, "none") else [quant])
    return " ".join([*parts, str(attrs.get("device"))])
