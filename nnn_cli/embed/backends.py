"""Text encoders that run a cached export (:mod:`nnn_cli.embed.export`) with onnxruntime or OpenVINO.

Both tokenise with the model's own fast tokenizer (``tokenizers``, no transformers, no torch), sort
the batch by token length and run it in sub-batches of similar length (``bucket_tokens`` padded
tokens at most, so short texts are not padded to the longest one), then put the rows back in input
order.  The export does the pooling; rows are L2-normalised by the caller, as for every encoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nnn_cli.embed.encoders import DEFAULT_ALIASES, DEFAULT_MODEL, Encoder
from nnn_cli.embed.export import BACKENDS, ONNX_HINT, OPENVINO_HINT, QUANTIZATIONS, ExportedModel
from nnn_cli.errors import DependencyError, InputError, ParameterError

AUTO_BACKEND = "onnx"
"""What ``--backend auto`` picks on the CPU for a sentence-transformers text model when onnxruntime is
installed (torch otherwise, and on a GPU); chosen from bench/bench_embed.py (README, "Embedding backends"):
the fp32 export gives torch's vectors (cosine 1.0000) at 5.5x torch's texts per CPU second on 10,000
lines; int8 keeps retrieval (top-10 91.7%, R@1 within 0.2 point) but was only 1.06x fp32 by CPU time on
this AVX2 CPU without VNNI, so it stays opt-in (``--quantize int8``)."""
AUTO_QUANTIZATION = "none"

BUCKET_TOKENS = 1024  # padded tokens per model call: sorted texts of similar length share a call
MAX_BUCKET_ROWS = 32
EXPORT_BATCH_SIZE = 512
"""Texts per :meth:`ExportEncoder.encode_texts` call when ``nnn embed`` is given no --batch-size: the
length sort works within a call, so a wider window pads less and fills the buckets (measured in the
README, "Embedding backends": about 2x fewer CPU seconds per text than 64-text calls)."""


class ExportEncoder(Encoder):
    """Shared part: tokenizer, length-sorted buckets, provenance."""

    modalities = ("text",)
    batch_size = EXPORT_BATCH_SIZE

    def __init__(self, name: str, exported: ExportedModel, threads: int = 0, model_checksum: str | None = None):
        super().__init__(name, "cpu", "int8" if exported.quantization == "int8" else "fp32")
        self.exported = exported
        self.kind = "sentence-transformers"
        self.backend = exported.backend
        self.threads = int(threads or 0)
        self.model_checksum = model_checksum or exported.manifest.get("source_checksum")
        self.dim = int(exported.manifest.get("dim") or 0) or None
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DependencyError(f"--backend {exported.backend} needs the tokenizers package: {ONNX_HINT}") from None
        try:
            tok = Tokenizer.from_file(str(exported.tokenizer))
        except Exception as exc:
            raise InputError(f"{exported.tokenizer}: unreadable tokenizer ({str(exc)[:160]})") from None
        tok.no_padding()
        tok.enable_truncation(exported.max_length)
        self.tokenizer = tok
        self.inputs = exported.inputs

    def describe(self) -> dict:
        return {
            **super().describe(),
            "backend": self.backend,
            "quantization": self.exported.quantization,
            "export_checksum": self.exported.checksum,
            "model_checksum": self.model_checksum,
        }

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return encode_bucketed(self.tokenizer, list(texts), self.inputs, self._run, self.dim)


def encode_bucketed(
    tokenizer,
    texts: list[str],
    inputs: list[str],
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    dim: int | None,
    bucket_tokens: int = BUCKET_TOKENS,
) -> np.ndarray:
    """Tokenise, sort by length (stable), run buckets of at most ``bucket_tokens`` padded tokens,
    and return the rows in input order."""
    if not texts:
        return np.zeros((0, dim or 0), dtype=np.float32)
    encodings = tokenizer.encode_batch(texts)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    order = np.argsort(lengths, kind="stable")
    out: np.ndarray | None = None
    start = 0
    while start < len(order):
        stop = start + 1
        # the bucket grows while (rows x longest length) stays within the budget
        while (
            stop < len(order)
            and stop - start < MAX_BUCKET_ROWS
            and (stop - start + 1) * int(lengths[order[stop]]) <= bucket_tokens
        ):
            stop += 1
        rows = order[start:stop]
        width = max(1, int(lengths[rows].max()))
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for j, i in enumerate(rows):
            enc = encodings[i]
            n = len(enc.ids)
            ids[j, :n] = enc.ids
            mask[j, :n] = 1
            types[j, :n] = enc.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        vectors = np.asarray(run({k: feed[k] for k in inputs}), dtype=np.float32)
        if out is None:
            out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        out[rows] = vectors
        start = stop
    assert out is not None
    return out


class OnnxEncoder(ExportEncoder):
    """The export run by onnxruntime (CPU provider, all graph optimisations)."""

    def __init__(self, name: str, exported: ExportedModel, threads: int = 0, model_checksum: str | None = None):
        super().__init__(name, exported, threads, model_checksum)
        try:
            import onnxruntime as ort
        except ImportError:
            raise DependencyError(f"--backend onnx needs onnxruntime: {ONNX_HINT}") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # idle pool threads sleep instead of spinning: the spin burns CPU that a shared or busy machine
        # needs, for no gain in texts/s (README, "Embedding backends")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(exported.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise InputError(f"{exported.path}: onnxruntime cannot load the export ({str(exc)[:160]})") from None
        self.output = self.session.get_outputs()[0].name

    def _run(self, feed):
        return self.session.run([self.output], feed)[0]


class OpenVinoEncoder(ExportEncoder):
    """The fp32 export (``raw.onnx``) compiled by OpenVINO for the CPU."""

    def __init__(self, name: str, exported: ExportedModel, threads: int = 0, model_checksum: str | None = None):
        super().__init__(name, exported, threads, model_checksum)
        try:
            import openvino as ov
        except ImportError:
            raise DependencyError(f"--backend openvino needs openvino: {OPENVINO_HINT}") from None
        config: dict = {"PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            compiled = ov.Core().compile_model(str(exported.path), "CPU", config)
        except Exception as exc:
            raise InputError(f"{exported.path}: OpenVINO cannot compile the export ({str(exc)[:160]})") from None
        self.request = compiled.create_infer_request()

    def _run(self, feed):
        return self.request.infer(feed)[0].copy()


def load_export_encoder(
    folder: Path,
    name: str,
    backend: str,
    quantization: str = "none",
    threads: int = 0,
    notes: Callable[[str], None] | None = None,
) -> ExportEncoder:
    """The encoder for ``backend`` from the export cache (exported first when missing or damaged)."""
    from nnn_cli.embed.export import ensure_export

    exported = ensure_export(folder, backend, quantization, notes)
    cls = OpenVinoEncoder if backend == "openvino" else OnnxEncoder
    return cls(name, exported, threads)


def export_folder(model: str | None) -> Path:
    """The local sentence-transformers folder behind a ``--model`` value, for an export backend."""
    from nnn_cli.embed.encoders import _package_model_path, default_model_path

    spec = (model or DEFAULT_MODEL).strip()
    if spec.lower() in DEFAULT_ALIASES or spec == DEFAULT_MODEL:
        return default_model_path()
    path = Path(spec)
    if path.is_dir():
        if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
            return path
        raise ParameterError(
            f"{spec}: --backend onnx/openvino exports sentence-transformers text model folders "
            "(with modules.json); use --backend torch for this model"
        )
    if not spec.startswith("open_clip:") and not path.is_file():
        package = _package_model_path(spec)
        if package is not None:
            return package
        raise InputError(f"{spec}: unknown model: not a folder or an installed model package (nothing is downloaded)")
    raise ParameterError(
        f"{spec}: --backend onnx/openvino exports sentence-transformers text models; use --backend torch"
    )


def onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("tokenizers") is not None


def resolve_backend(backend: str, quantize: str | None, model: str | None, device: str) -> tuple[str, str]:
    """``(backend, quantization)`` after ``auto``: see :data:`AUTO_BACKEND` (why) and the README."""
    quantization = quantize or "none"
    if quantization not in QUANTIZATIONS:
        raise ParameterError(f"unknown --quantize {quantization!r}: use none or int8")
    if backend not in (*BACKENDS, "auto"):
        raise ParameterError(f"unknown --backend {backend!r}: use auto, torch, onnx or openvino")
    if backend == "auto":
        if device == "cuda" or not onnx_available():
            backend = "torch"
        else:
            try:
                export_folder(model)
            except (ParameterError, InputError, DependencyError):
                backend = "torch"
            else:
                backend = AUTO_BACKEND
                if quantize is None:
                    quantization = AUTO_QUANTIZATION
                if device == "auto" and _cuda_visible():
                    backend, quantization = "torch", quantize or "none"
    if backend == "torch" and quantization != "none":
        raise ParameterError("--quantize int8 needs --backend onnx (the torch backend runs fp32 or fp16)")
    if backend != "torch" and device == "cuda":
        raise ParameterError(f"--backend {backend} runs on the CPU; use --backend torch with --device cuda")
    return backend, quantization


def _cuda_visible() -> bool:
    """Whether torch (if installed) sees a GPU, without importing torch when it is not installed."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def load_text_encoder(
    model: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    image_size: int = 224,
    *,
    backend: str = "auto",
    quantize: str | None = None,
    threads: int = 0,
    notes: Callable[[str], None] | None = None,
) -> Encoder:
    """:func:`~nnn_cli.embed.encoders.load_encoder` for ``backend="torch"``; else the cached export."""
    from nnn_cli.embed.encoders import _offline, load_encoder

    chosen, quantization = resolve_backend(backend, quantize, model, device)
    if chosen == "torch":
        encoder = load_encoder(model, device, precision, image_size)
        return encoder
    if precision not in ("auto", "fp32"):
        raise ParameterError(f"--precision {precision} needs --backend torch; exports run fp32 (or --quantize int8)")
    _offline()
    folder = export_folder(model)
    name = (model or DEFAULT_MODEL).strip()
    if name.lower() in DEFAULT_ALIASES:
        name = DEFAULT_MODEL
    return load_export_encoder(folder, name, chosen, quantization, threads, notes)


__all__ = [
    "BUCKET_TOKENS",
    "ExportEncoder",
    "OnnxEncoder",
    "OpenVinoEncoder",
    "encode_bucketed",
    "export_folder",
    "load_export_encoder",
    "load_text_encoder",
    "resolve_backend",
]
