"""`nnn embed`: raw texts or images through a local model into an embedding file (resumable)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

from nnn_cli.data.locks import DEFAULT_WAIT
from nnn_cli.data.outputs import check_output_path
from nnn_cli.embed.backends import load_text_encoder
from nnn_cli.embed.encoders import set_torch_threads
from nnn_cli.embed.readers import open_input
from nnn_cli.embed.run import EmbedSummary, embed_input
from nnn_cli.embed.store import check_embed_output
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import JobResult, NoteFn, Notes, PathLike, ProgressFn

MAX_SKIP_NOTES = 20


@dataclass(frozen=True)
class EmbedRequest:
    """Everything ``nnn embed`` needs (the fields are :func:`embed`'s keyword arguments)."""

    input_path: PathLike
    output: PathLike
    model: Optional[str] = None
    modality: Optional[str] = None
    text_column: str = "text"
    id_column: Optional[str] = None
    batch_size: Optional[int] = None  # None: the encoder's own (64 for torch, 512 for the exports)
    device: str = "auto"
    precision: str = "auto"
    dtype: str = "float32"
    image_size: int = 224
    restart: bool = False
    threads: int = 0
    max_batches: Optional[int] = None
    input_format: Optional[str] = None
    output_format: str = "h5"
    stream: BinaryIO | None = None
    stdin: BinaryIO | None = None
    wait: float = DEFAULT_WAIT
    backend: str = "auto"
    quantize: Optional[str] = None

    def __post_init__(self) -> None:
        if self.to_stream and self.output_format not in ("h5", "npy"):
            raise ParameterError(f"--output-format must be h5 or npy, got {self.output_format!r}")

    @property
    def to_stream(self) -> bool:
        return str(self.output) == "-"


def embed(
    input_path: PathLike,
    output: PathLike,
    *,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    **options: Any,
) -> JobResult:
    """Embed and write ``output``; ``options`` are :class:`EmbedRequest`'s fields (``summary`` is
    `nnn embed --json`'s document).  A KeyboardInterrupt leaves ``OUT.partial`` to resume from.

    ``input_path="-"`` reads standard input (``stdin``, default the process's) exactly once, as do
    pipes, FIFOs and process substitution; ``output="-"`` writes the finished file's bytes to
    ``stream`` (HDF5 with ids, or ``.npy`` with ``output_format="npy"``) and nothing unless complete.

    ``backend``: ``torch``, ``onnx`` or ``openvino`` (an export made once and cached, see
    :mod:`nnn_cli.embed.export`), or ``auto`` (:func:`~nnn_cli.embed.backends.resolve_backend`);
    ``quantize="int8"`` runs the int8 export (onnx only)."""
    return run_embed(EmbedRequest(input_path, output, **options), progress, on_note, on_skip)


def run_embed(
    req: EmbedRequest,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> JobResult:
    """Check the output, open the input, load the encoder, embed batch by batch, and report."""
    notes = Notes(on_note)
    if not req.to_stream:
        output = Path(req.output)
        check_embed_output(output)
        inp = req.input_path
        check_output_path(output, [inp] if str(inp) != "-" and Path(inp).is_file() else [])
    source = open_input(
        req.input_path, req.modality, req.text_column, req.id_column, input_format=req.input_format, stdin=req.stdin
    )
    t0 = time.perf_counter()
    encoder = _encoder(req, source.modality, notes)
    load_seconds = time.perf_counter() - t0
    skips = _Skips(notes, on_skip)
    summary: EmbedSummary = embed_input(
        source, encoder, req.output, batch_size=req.batch_size or encoder.batch_size, dtype=req.dtype, restart=req.restart,
        progress=progress, on_skip=skips, max_batches=req.max_batches, stream=req.stream,
        stream_format=req.output_format, wait=req.wait,
    )  # fmt: skip
    skips.close()
    if summary.discarded_partial and summary.discarded_partial != "--restart":
        notes(f"note: started over ({summary.discarded_partial})")
    result = {**summary.to_dict(), "model_load_seconds": round(load_seconds, 3), "message": _message(req, summary)}
    written = Path(req.output) if summary.complete and not req.to_stream else None
    return JobResult(result, written, notes.lines)


def _encoder(req: EmbedRequest, modality: str, notes: Notes):
    backend = req.backend if (modality == "text" or req.backend != "auto") else "torch"
    encoder = load_text_encoder(
        req.model, req.device, req.precision, req.image_size, backend=backend, quantize=req.quantize,
        threads=req.threads, notes=notes,
    )  # fmt: skip
    if getattr(encoder, "backend", "torch") == "torch":
        set_torch_threads(req.threads)
    return encoder


class _Skips:
    """Unreadable items: to ``on_skip`` when given, else the first :data:`MAX_SKIP_NOTES` as warnings."""

    def __init__(self, notes: Notes, on_skip: Callable[[str, str], None] | None):
        self.notes, self.on_skip, self.count = notes, on_skip, 0

    def __call__(self, ident: str, reason: str) -> None:
        self.count += 1
        if self.on_skip is not None:
            self.on_skip(ident, reason)
        elif self.count <= MAX_SKIP_NOTES:
            self.notes(f"warning: skipped {ident}: {reason}")

    def close(self) -> None:
        if self.count > MAX_SKIP_NOTES and self.on_skip is None:
            self.notes(f"warning: ... and {self.count - MAX_SKIP_NOTES} more skipped")


def _message(req: EmbedRequest, summary: EmbedSummary) -> str:
    """The one line ``nnn embed`` prints: what was written, or how far an interrupted run got."""
    resumed = f", resumed after {summary.resumed_records} items" if summary.resumed_records else ""
    if not summary.complete:
        return (
            f"stopped after {summary.encoded_now} items ({summary.n_embedded} rows so far{resumed}); "
            f"rerun the same command to finish {req.output}"
        )
    npy = not req.to_stream and Path(req.output).suffix.lower() == ".npy"
    where = f"{req.output}.json" if npy else "skipped_ids in the file"
    skipped_text = f"; {summary.n_skipped} skipped (see {where})" if summary.n_skipped else ""
    return (
        f"wrote {'<stdout>' if req.to_stream else req.output}: {summary.n_embedded} x {summary.dim} "
        f"{summary.attrs['modality']} embeddings ({summary.attrs['model']}, {_how(summary.attrs)}) in "
        f"{summary.seconds:.1f}s, {summary.items_per_second:.1f} items/s{resumed}{skipped_text}"
    )


def _how(attrs: dict) -> str:
    """``cpu``, ``cuda``, ``onnx cpu``, ``onnx int8 cpu``: what ran the model."""
    backend = attrs.get("backend", "torch")
    quant = attrs.get("quantization", "none")
    parts = ([] if backend == "torch" else [backend]) + ([] if quant in (None, "none") else [quant])
    return " ".join([*parts, str(attrs.get("device"))])
