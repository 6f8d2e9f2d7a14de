"""`nnn query`: embed a text with the gallery's own model and show its (debiased) ranking; writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from nnn_cli.embed.query import query_text
from nnn_cli.jobs.common import JobResult, PathLike, setup_threads


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
) -> JobResult:
    """``summary["results"]``: one entry per text, as a line of `nnn search -o -` plus the text."""
    setup_threads(threads)
    found = query_text(
        list(texts) if not isinstance(texts, str) else texts,
        gallery,
        bias,
        top_k,
        model,
        metric=metric,
        device=device,
        force=force,
    )
    found = found if isinstance(found, list) else [found]
    return JobResult(
        {
            "results": [r.to_dict() for r in found],
            "debiased": bias is not None,
            "model": found[0].model if found else model,
        }
    )
