"""`nnn query`: embed a text with the gallery's own model and show its (debiased) ranking; writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from nnn_cli.embed.query import query_text
from nnn_cli.jobs.common import JobResult, NoteFn, Notes, PathLike, setup_threads


def query(
    texts: str | Sequence[str],
    gallery: PathLike,
    *,
    bias: Optional[PathLike] = None,
    top_k: int = 10,
    model: Optional[str] = None,
    metric: str = "cosine",
    device: str = "auto",
    force: bool = False,
    threads: int = 0,
    backend: Optional[str] = None,
    quantize: Optional[str] = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """``summary["results"]``: one entry per text, as a line of `nnn search -o -` plus the text.

    The text is embedded the way the gallery was (its recorded model, backend and quantisation; see
    :func:`~nnn_cli.embed.query.encoder_for_gallery`); ``backend``/``quantize`` override that with a warning."""
    notes = Notes(on_note)
    setup_threads(threads)
    items = list(texts) if not isinstance(texts, str) else texts
    found = query_text(
        items, gallery, bias, top_k, model, metric=metric, device=device, force=force, backend=backend,
        quantize=quantize, notes=notes,
    )  # fmt: skip
    found = found if isinstance(found, list) else [found]
    model_used = found[0].model if found else model
    summary = {"results": [r.to_dict() for r in found], "debiased": bias is not None, "model": model_used}
    return JobResult(summary, notes=notes.lines)
