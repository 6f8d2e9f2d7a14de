"""One-shot text queries (`nnn query "text" --gallery G [--bias B]`): embed, search, rank.

The text is embedded with the model recorded in the gallery file (the attributes ``nnn embed``
writes: ``model``, ``model_kind``, ``modality``, ``image_size``; for a ``.npy`` gallery the
sidecar ``FILE.npy.json``), or with ``model`` when given, L2-normalised like ``nnn embed`` does,
and ranked against the gallery by the plain or the debiased score ``s(q, r) - b(r)``.
Nothing is written: a person can try a debiased search without making a query file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnn_cli.errors import InputError, MismatchError, NNNError, ParameterError


@dataclass
class QueryResult:
    """The ranked gallery rows for one query text, best first."""

    text: str
    indices: np.ndarray  # (k,) int64 gallery rows
    scores: np.ndarray  # (k,) float32, debiased when a bias was given
    ids: list[str] | None  # gallery ids of those rows, when the gallery has ids
    debiased: bool
    model: str

    def to_dict(self) -> dict:
        """One JSON object, like a line of ``nnn search -o -`` plus the query text."""
        results = []
        for rank, (i, s) in enumerate(zip(self.indices, self.scores)):
            item: dict[str, object] = {"rank": rank + 1, "index": int(i), "score": round(float(s), 6)}
            if self.ids is not None:
                item["id"] = self.ids[rank]
            results.append(item)
        return {"query_text": self.text, "model": self.model, "debiased": self.debiased, "results": results}


def gallery_model(gallery) -> dict:
    """The embedding attributes a gallery file records (``model``, ``model_kind``, ``modality``, ...).

    ``gallery`` is a path/spec or an :class:`~nnn_cli.data.sources.EmbeddingSource`; returns {}
    when the file records none (a ``.npy`` without sidecar, a shard folder, stdin).
    """
    from nnn_cli.data.h5 import attr_value, is_h5_path, open_h5_safe, split_spec
    from nnn_cli.data.sources import sidecar_attrs

    path = Path(gallery.path) if hasattr(gallery, "path") else split_spec(gallery)[0]
    if str(path) == "-" or path.is_dir() or not path.exists():
        return {}
    if is_h5_path(path):
        with open_h5_safe(path) as f:
            return {key: attr_value(value) for key, value in f.attrs.items()}
    if path.suffix.lower() == ".npy":
        return sidecar_attrs(path)
    return {}


def encoder_for_gallery(
    gallery,
    model: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    *,
    backend: str | None = None,
    quantize: str | None = None,
    notes=None,
):
    """Load the encoder that made ``gallery`` (or ``model``); a :class:`ParameterError` if none is known.

    The backend and quantisation are the gallery's recorded ones (``backend``/``quantize`` override them,
    with a warning to ``notes`` when they differ).  A gallery made by torch in fp32 (or recording no
    backend) is queried through the cached fp32 ONNX export when onnxruntime is installed and the device
    is not cuda: the same model and arithmetic (cosine >= 0.9999 to torch), loaded in well under a second
    instead of importing torch.
    """
    from nnn_cli.embed.backends import export_folder, load_text_encoder, onnx_available

    attrs = gallery_model(gallery)
    name = model or attrs.get("model")
    if not name:
        label = getattr(gallery, "name", str(gallery))
        raise ParameterError(
            f"{label}: the gallery does not record which model made it "
            "(not written by `nnn embed`); name it with --model"
        )
    spec = recorded_model_spec(str(name))
    recorded = (str(attrs.get("backend") or "torch"), str(attrs.get("quantization") or "none"))
    if backend not in (None, "auto") or quantize is not None:
        chosen = (backend if backend not in (None, "auto") else recorded[0], quantize or "none")
        if chosen != recorded and notes is not None:
            notes(
                f"warning: the gallery's embeddings were made with {describe_backend(*recorded)}, "
                f"the query's with {describe_backend(*chosen)}: scores are not exactly comparable"
            )
    else:
        chosen = recorded
        if recorded == ("torch", "none") and device != "cuda" and attrs.get("device") != "cuda" and onnx_available():
            try:
                export_folder(spec)
                chosen = ("onnx", "none")  # same fp32 model, from the export cache
            except NNNError:
                pass
    return load_text_encoder(
        spec,
        "cpu" if chosen[0] != "torch" and device == "auto" else device,
        precision,
        int(attrs.get("image_size") or 224),
        backend=chosen[0],
        quantize=chosen[1],
        notes=notes,
    )


def describe_backend(backend: str, quantization: str) -> str:
    """``torch fp32``, ``onnx int8``..."""
    return f"{backend} {'fp32' if quantization in (None, 'none') else quantization}"


def recorded_model_spec(name: str) -> str:
    """A recorded model name as :func:`load_encoder` takes it: ``"NAME (package PKG)"`` -> ``PKG``
    (how sample_data records the default model), anything else unchanged."""
    import re

    match = re.search(r"\(package ([A-Za-z0-9_.-]+)\)\s*$", name)
    return match.group(1) if match else name


def query_text(
    text: str | Sequence[str],
    gallery,
    bias=None,
    top_k: int = 10,
    model: str | None = None,
    *,
    metric: str = "cosine",
    device: str = "auto",
    encoder=None,
    force: bool = False,
    backend: str | None = None,
    quantize: str | None = None,
    notes=None,
):
    """Rank ``gallery`` for ``text`` (one string, or a list of them) by the plain or debiased score.

    ``gallery``: a path/spec or an open :class:`EmbeddingSource`.  ``bias``: a bias file path
    (checked against the gallery like ``nnn search`` does, unless ``force``), an (N,) array, or
    None for plain scores.  ``encoder`` skips model loading (tests, or a caller that keeps one).
    Returns a :class:`QueryResult` (a list of them when ``text`` is a list).
    """
    from nnn_cli.core.search import search
    from nnn_cli.data.inputs import open_embeddings
    from nnn_cli.embed.run import normalise_rows

    texts = [text] if isinstance(text, str) else list(text)
    if not texts or any(not str(t).strip() for t in texts):
        raise ParameterError("give a non-empty query text")
    if top_k < 1:
        raise ParameterError(f"--top-k must be at least 1, got {top_k}")
    g_src = gallery if hasattr(gallery, "read") else open_embeddings(gallery, "gallery")
    b = None
    if bias is not None and not isinstance(bias, np.ndarray):
        from nnn_cli.data.manifest import load_bias as read_bias
        from nnn_cli.data.provenance import check_bias_matches

        bf = read_bias(bias)
        check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric, force)
        b = bf.bias
    elif bias is not None:
        b = np.asarray(bias, dtype=np.float32)
        if b.shape != (g_src.n,):
            raise MismatchError(f"bias has {b.size} entries but the gallery {g_src.name} has {g_src.n} rows")
    if encoder is None:
        encoder = encoder_for_gallery(g_src, model, device, backend=backend, quantize=quantize, notes=notes)
    encoder.check_modality("text")
    vectors, good = normalise_rows(encoder.encode_texts([str(t) for t in texts]))
    if not good.all():
        raise InputError(
            f"model {encoder.name} returned a zero or non-finite vector for {texts[int(np.argmin(good))]!r}"
        )
    if vectors.shape[1] != g_src.dim:
        raise MismatchError(
            f"model {encoder.name} gives {vectors.shape[1]}-dimensional vectors but the gallery "
            f"{g_src.name} has d={g_src.dim}; name the model that made it with --model"
        )
    g = g_src.read(metric)
    scores, idx = search(vectors, g, b, min(top_k, g_src.n))
    g_ids = g_src.ids()
    out = [
        QueryResult(
            str(t),
            idx[i],
            scores[i],
            None if g_ids is None else [str(x) for x in g_ids[idx[i]]],
            b is not None,
            encoder.name,
        )
        for i, t in enumerate(texts)
    ]
    return out[0] if isinstance(text, str) else out


__all__ = ["QueryResult", "encoder_for_gallery", "gallery_model", "query_text"]
