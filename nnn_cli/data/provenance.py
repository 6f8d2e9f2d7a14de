"""What an output was made from: attributes recorded in every file we write, and the checks that use them.

Every HDF5 output records the tool version, creation time and, for each input,
its path, shape, dtype and content fingerprint (blake2b of shape, dtype and
the stored bytes; see :meth:`EmbeddingSource.fingerprint`).  Bias files also
record their inputs as a list of *parts* (``gallery_parts``,
``reference_parts``): one part when made by ``nnn bias``, one more per
``--append-to`` (gallery) or ``--reference-add`` (reference).  With several
parts, ``{prefix}_fingerprint`` is :func:`combined_fingerprint` of the list;
a file matches them when it holds the parts' rows in order, each range having
the part's fingerprint (so ``cat``-ing the parts into one file matches).
``history`` is a JSON list of ``{"op", "n_added", "source", "fingerprint",
"time"}``, one entry per operation.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping

from nnn_cli._version import __version__
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.errors import MismatchError


def now_utc() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        "created": now_utc(),
        **extra,
    }


# ---------------------------------------------------------------------------
# Parts and combined fingerprints
# ---------------------------------------------------------------------------
def part_record(src: EmbeddingSource) -> dict:
    """One part of a gallery or reference: where it came from, its rows and fingerprint."""
    return {"path": src.name, "rows": src.n, "dtype": str(src.dtype), "fingerprint": src.fingerprint()}


def combined_fingerprint(parts: list[dict]) -> str:
    """Fingerprint of a gallery/reference made of several parts: the part fingerprint if one,
    else blake2b of the ordered ``rows:fingerprint`` list, prefixed ``parts:``."""
    if len(parts) == 1:
        return parts[0]["fingerprint"]
    text = "\n".join(f"{int(p['rows'])}:{p['fingerprint']}" for p in parts)
    return "parts:" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def json_attr(attrs: dict, key: str, default):
    """An attribute stored as JSON text (lists, dicts), decoded; ``default`` when absent or unreadable."""
    value = attrs.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return default
    return value


def recorded_parts(attrs: dict, prefix: str) -> list[dict]:
    """The parts recorded for ``prefix`` (``gallery``/``reference``); older files give one part or none."""
    parts = json_attr(attrs, f"{prefix}_parts", None)
    if parts:
        return list(parts)
    fingerprint = attrs.get(f"{prefix}_fingerprint")
    shape = json_attr(attrs, f"{prefix}_shape", None)
    if fingerprint and shape:
        return [
            {
                "path": attrs.get(f"{prefix}_path", "?"),
                "rows": int(list(shape)[0]),
                "dtype": attrs.get(f"{prefix}_dtype", "?"),
                "fingerprint": fingerprint,
            }
        ]
    return []


def parts_attrs(prefix: str, parts: list[dict], dim: int) -> dict:
    """The attributes that describe a gallery/reference made of ``parts``."""
    rows = sum(int(p["rows"]) for p in parts)
    return {
        f"{prefix}_path": parts[0]["path"] if len(parts) == 1 else " + ".join(p["path"] for p in parts),
        f"{prefix}_shape": [rows, int(dim)],
        f"{prefix}_dtype": parts[0]["dtype"] if len({p["dtype"] for p in parts}) == 1 else "mixed",
        f"{prefix}_fingerprint": combined_fingerprint(parts),
        f"{prefix}_parts": parts,
        f"n_{prefix}": rows,
    }


def history_entry(op: str, src: EmbeddingSource) -> dict:
    """One ``history`` record: what was done, with which file, when."""
    return {"op": op, "n_added": src.n, "source": src.name, "fingerprint": src.fingerprint(), "time": now_utc()}


def bias_provenance(gallery: EmbeddingSource, reference: EmbeddingSource) -> dict:
    """Attributes of a freshly computed bias file: one part each, a ``create`` history entry."""
    out = {**source_attrs("gallery", gallery), **source_attrs("reference", reference)}
    out.update(parts_attrs("gallery", [part_record(gallery)], gallery.dim))
    out.update(parts_attrs("reference", [part_record(reference)], reference.dim))
    out["history"] = [
        history_entry("create", gallery)
        | {"reference": reference.name, "reference_fingerprint": reference.fingerprint()}
    ]
    return out


# ---------------------------------------------------------------------------
# Guards
# ---------------------------------------------------------------------------
def check_matches_parts(attrs: dict, prefix: str, src: EmbeddingSource, file_label: str, hint: str) -> None:
    """Raise :class:`MismatchError` unless ``src`` holds exactly the recorded ``prefix`` parts, in order.

    Nothing is checked when the file records no parts (a ``.npy`` bias, or one
    written by another tool).  ``hint`` ends the message (what to do).
    """
    parts = recorded_parts(attrs, prefix)
    if not parts:
        return
    total = sum(int(p["rows"]) for p in parts)
    if src.n != total:
        raise MismatchError(
            f"{file_label} was made for a {prefix} of {total} rows ({_describe(parts)}), "
            f"but {src.name} has {src.n} rows; {hint}"
        )
    start = 0
    for i, part in enumerate(parts):
        stop = start + int(part["rows"])
        got = src.fingerprint() if len(parts) == 1 else src.fingerprint_rows(start, stop)
        if got != part["fingerprint"]:
            if len(parts) == 1:
                raise MismatchError(
                    f"{file_label} was made for {prefix} {part['path']} (fingerprint {part['fingerprint'][:12]}), "
                    f"but {src.name} holds different data (fingerprint {got[:12]}); {hint}"
                )
            raise MismatchError(
                f"{file_label} was made for a {prefix} of {len(parts)} parts, but rows {start}..{stop - 1} of "
                f"{src.name} (fingerprint {got[:12]}) differ from part {i + 1}, {part['path']} "
                f"(fingerprint {part['fingerprint'][:12]}); {hint}"
            )
        start = stop


def _describe(parts: list[dict]) -> str:
    if len(parts) == 1:
        return parts[0]["path"]
    return f"{len(parts)} parts: " + ", ".join(p["path"] for p in parts)


def check_bias_matches(
    attrs: dict, n_bias: int, bias_label: str, gallery: EmbeddingSource, metric: str, force: bool = False
) -> None:
    """Refuse a bias file made for another gallery (rows, fingerprint) or metric.

    ``force`` skips the fingerprint and metric checks, never the row count
    (one bias per gallery row is needed to search at all).
    """
    if n_bias != gallery.n:
        raise MismatchError(
            f"{bias_label} holds {n_bias} biases but the gallery {gallery.name} has {gallery.n} rows; "
            "recompute it with `nnn bias` for this gallery (or grow it with `nnn bias --append-to`)"
        )
    if force:
        return
    made_for = attrs.get("metric")
    if made_for and made_for != metric:
        raise MismatchError(
            f"{bias_label} was computed with --metric {made_for}, but this run uses --metric {metric}; "
            f"pass --metric {made_for}, recompute the bias, or pass --force"
        )
    check_matches_parts(
        attrs,
        "gallery",
        gallery,
        bias_label,
        "recompute the bias with `nnn bias` for this gallery, or pass --force to use it anyway",
    )


def same_number(a, b) -> bool:
    """Two recorded parameters (alpha, k) are the same value."""
    return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)


def bias_source_attrs(attrs: dict, bias, label: str) -> dict:
    """What an output that used a bias file records about it: path, parameters, content hash, its inputs."""
    import numpy as np

    digest = hashlib.blake2b(np.ascontiguousarray(bias, dtype=np.float32).tobytes(), digest_size=16).hexdigest()
    out = {"bias_path": label, "bias_fingerprint": digest}
    for key in ("alpha", "k", "metric", "gallery_fingerprint", "reference_fingerprint", "n_reference"):
        if key in attrs:
            out[f"bias_{key}"] = attrs[key]
    return out


def run_provenance(sources: Mapping[str, EmbeddingSource | None], bias_attrs: dict | None = None) -> dict:
    """A JSON-able record of the inputs of a run (for ``--json`` outputs): tool version and each input's
    path, shape and fingerprint (already known after the inputs were read)."""
    out: dict = {"nnn_version": __version__, "time": now_utc()}
    for role, src in sources.items():
        if src is not None:
            out[role] = {"path": src.name, "shape": list(src.shape), "fingerprint": src.fingerprint()}
    if bias_attrs:
        out["bias"] = bias_attrs
    return out


# ---------------------------------------------------------------------------
# How embeddings were computed (nnn embed --backend/--quantize)
# ---------------------------------------------------------------------------
def embedding_recipe(src: EmbeddingSource) -> tuple[str, str] | None:
    """``(backend, quantization)`` recorded by ``nnn embed`` in an input (HDF5 attributes or the
    ``.npy`` sidecar); files from before backends record a model only (torch, fp32); None when the
    input records no model at all (not made by ``nnn embed``, a shard folder, stdin)."""
    from pathlib import Path

    from nnn_cli.data.h5 import attr_value, open_h5_safe
    from nnn_cli.data.sources import sidecar_attrs

    path = Path(src.path) if getattr(src, "path", None) is not None else None
    if path is None or not path.is_file():
        return None
    attrs: dict = {}
    try:
        if src.kind == "h5":
            with open_h5_safe(path) as f:
                attrs = {
                    key: attr_value(f.attrs[key]) for key in ("model", "backend", "quantization") if key in f.attrs
                }
        elif src.kind == "npy":
            attrs = sidecar_attrs(path)
    except (OSError, ValueError, KeyError):
        return None
    if not attrs.get("model"):
        return None
    return str(attrs.get("backend") or "torch"), str(attrs.get("quantization") or "none")


def backend_mismatch(sources: list[EmbeddingSource]) -> str | None:
    """A warning line when the inputs' embeddings were computed differently (torch fp32 against onnx int8...)."""
    seen = [(src, embedding_recipe(src)) for src in sources if src is not None]
    known = [(src, recipe) for src, recipe in seen if recipe is not None]
    if len({recipe for _, recipe in known}) <= 1:
        return None

    def how(recipe: tuple[str, str]) -> str:
        return f"{recipe[0]} {'fp32' if recipe[1] == 'none' else recipe[1]}"

    parts = ", ".join(f"{src.label} {src.name}: {how(recipe)}" for src, recipe in known)
    if len({recipe[1] for _, recipe in known}) == 1:  # all fp32: the same arithmetic, rows agree to ~1e-5
        return f"note: these embeddings were computed with different backends ({parts}), all in fp32"
    return (
        f"warning: these embeddings were computed with different backends ({parts}); "
        "scores across them are not exactly comparable: embed all with one --backend/--quantize"
    )
