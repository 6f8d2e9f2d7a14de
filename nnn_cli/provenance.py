"""What an output was made from: attributes recorded in every file we write."""

from __future__ import annotations

import datetime as _dt

from . import __version__
from .io import EmbeddingSource


def source_attrs(prefix: str, src: EmbeddingSource) -> dict:
    """``{prefix}_path``, ``_shape``, ``_dtype`` and ``_fingerprint`` of an input."""
    return {
        f"{prefix}_path": src.name,
        f"{prefix}_shape": list(src.shape),
        f"{prefix}_dtype": str(src.dtype),
        f"{prefix}_fingerprint": src.fingerprint(),
    }


def base_attrs(kind: str, **extra) -> dict:
    """Common attributes: what kind of file, tool version, creation time (UTC, ISO 8601)."""
    return {
        "nnn_kind": kind,
        "nnn_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
