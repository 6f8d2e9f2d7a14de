"""What a file of ours holds and how it was made (``nnn info``).

Reads headers and attributes only (never unpickles, never follows links out
of an HDF5 file); the content fingerprint of embedding arrays, which needs a
full read, is computed only on request.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from nnn_cli.data.h5 import H5_SUFFIXES, attr_value, is_h5_path, open_h5_safe, split_spec
from nnn_cli.data.inputs import open_embeddings
from nnn_cli.data.provenance import json_attr
from nnn_cli.errors import InputError

JSON_ATTRS = ("history", "gallery_parts", "reference_parts", "gallery_shape", "reference_shape", "queries_shape")


def describe_file(spec: str | os.PathLike, fingerprint: bool = False) -> dict:
    """A JSON-able description: ``kind``, ``format``, ``datasets`` (name -> shape, dtype) and ``attrs``.

    ``kind`` is ``embeddings``, ``bias``, ``results``, ``truth``, ``params`` or
    ``unknown``; for bias files made by ``nnn bias`` the provenance attributes
    (parts, history) are decoded from JSON.  ``fingerprint=True`` adds the
    content fingerprint of an embedding array (what bias files record).
    """
    path, _ = split_spec(spec)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir() and (path / "manifest.json").exists():
        return _describe_manifest(path)
    if path.is_dir():
        return _describe_folder(path, spec, fingerprint)
    suffix = path.suffix.lower()
    if is_h5_path(path):
        out = _describe_h5(path)
    elif suffix == ".npy":
        out = _describe_npy(path)
    elif suffix == ".npz":
        out = _describe_npz(path)
    elif suffix == ".json":
        out = _describe_json(path)
    elif suffix == ".jsonl":
        out = _describe_jsonl(path)
    else:
        raise InputError(
            f"{path}: unknown file type {suffix or '(none)'!r}; nnn files end in "
            f"{', '.join(H5_SUFFIXES)}, .npy, .npz, .json or .jsonl"
        )
    out = {"path": str(path), "bytes": path.stat().st_size, **out}
    if fingerprint and out["kind"] == "embeddings":
        out["fingerprint"] = open_embeddings(spec).fingerprint()
    return out


def _describe_folder(path: Path, spec, fingerprint: bool) -> dict:
    """A folder of ``.npy`` shards (autofaiss / clip-retrieval): one embedding matrix."""
    from nnn_cli.data.shards import open_shard_folder

    src = open_shard_folder(path)  # a parent folder gets an error naming img_emb/ or text_emb/
    attrs: dict = {
        "shards": len(src.shard_paths),
        "first_shard": src.shard_paths[0].name,
        "last_shard": src.shard_paths[-1].name,
        "ids": src.ids_source or "none (row numbers)",
    }
    if src.notes:
        attrs["notes"] = list(src.notes)
    out: dict = {
        "path": str(path),
        "bytes": sum(p.stat().st_size for p in src.shard_paths),
        "format": "npy shards",
        "kind": "embeddings",
        "datasets": {"embeddings": _array_entry(src.shape, src.dtype)},
        "attrs": attrs,
    }
    if src.ids() is not None:
        out["datasets"]["ids"] = _array_entry((src.n,), "str")
    if fingerprint:
        out["fingerprint"] = src.fingerprint()
    return out


def _array_entry(shape, dtype) -> dict:
    return {"shape": [int(x) for x in shape], "dtype": str(dtype)}


def _guess_kind(names: set[str]) -> str:
    if "bias" in names:
        return "bias"
    if {"indices", "scores"} <= names:
        return "results"
    if "embeddings" in names:
        return "embeddings"
    if "truth" in names:
        return "truth"
    return "unknown"


def _describe_h5(path: Path) -> dict:
    import h5py

    datasets: dict[str, dict] = {}
    with open_h5_safe(path) as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                datasets[name] = _array_entry(obj.shape, obj.dtype)

        f.visititems(visit)
        attrs = {key: attr_value(value) for key, value in f.attrs.items()}
    for key in JSON_ATTRS:
        if key in attrs:
            attrs[key] = json_attr(attrs, key, attrs[key])
    kind = attrs.get("nnn_kind") or _guess_kind(set(datasets))
    if kind == "bias" and "topk" in datasets:
        attrs.setdefault("stored_topk", True)
    return {"format": "hdf5", "kind": kind, "datasets": datasets, "attrs": attrs}


def _npy_header(fh, name: str) -> tuple[tuple, np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{name}: not a readable .npy file ({exc})") from None
    return shape, dtype


def _npy_kind(shape: tuple, dtype: np.dtype) -> str:
    if dtype.hasobject:
        return "python objects (refused by nnn: pickles are never loaded)"
    if len(shape) == 2 and dtype.kind == "f":
        return "embeddings"
    if len(shape) == 1 and dtype.kind == "f":
        return "bias"
    if dtype.kind in "iu" and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 2)):
        return "truth"
    return "unknown"


def _describe_npy(path: Path) -> dict:
    from nnn_cli.data.sources import sidecar_attrs, sidecar_of

    with open(path, "rb") as fh:
        shape, dtype = _npy_header(fh, str(path))
    attrs = sidecar_attrs(path)  # what `nnn embed` recorded in FILE.npy.json (model, modality, ...)
    if attrs:
        attrs["sidecar"] = str(sidecar_of(path))
    return {
        "format": "npy",
        "kind": _npy_kind(shape, dtype),
        "datasets": {"": _array_entry(shape, dtype)},
        "attrs": attrs,
    }


def _describe_npz(path: Path) -> dict:
    datasets: dict[str, dict] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                with zf.open(member) as fh:
                    shape, dtype = _npy_header(fh, f"{path}:{member}")
                datasets[member[:-4]] = _array_entry(shape, dtype)
    except zipfile.BadZipFile:
        raise InputError(f"{path}: not a readable .npz archive") from None
    return {"format": "npz", "kind": _guess_kind(set(datasets)), "datasets": datasets, "attrs": {}}


def _describe_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    kind = "params" if isinstance(data, dict) and {"alpha", "k"} <= set(data) else "unknown"
    return {"format": "json", "kind": kind, "datasets": {}, "attrs": data if isinstance(data, dict) else {}}


def _describe_jsonl(path: Path) -> dict:
    lines = 0
    first = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                lines += 1
                if first is None:
                    first = line
    attrs: dict = {"records": lines}
    kind = "unknown"
    if first is not None:
        try:
            rec = json.loads(first)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "results" in rec:
            kind = "results"
            attrs["top_k"] = len(rec["results"])
    return {"format": "jsonl", "kind": kind, "datasets": {}, "attrs": attrs}


def _describe_manifest(path: Path) -> dict:
    """The output folder of `nnn bias --engine ray`: parameters, inputs, plan and blocks done / total."""
    from nnn_cli.data.manifest import read_manifest

    m = read_manifest(path)
    n_blocks = int(m["plan"]["blocks"])
    done = len(m.get("blocks_done", {}))
    n_rows = sum(int(r["rows"][1]) - int(r["rows"][0]) for r in m.get("blocks_done", {}).values())
    attrs = {
        **m.get("params", {}),
        "engine": m.get("engine", "ray"),
        "blocks_done": done,
        "blocks_total": n_blocks,
        "complete": bool(m.get("complete")) and done == n_blocks,
        "plan": m["plan"],
        "inputs": m.get("inputs", {}),
    }
    if m.get("index"):  # --index: the index used (kind, depth, sample recall), kept as index.faiss
        attrs["index_used"] = {key: v for key, v in m["index"].items() if not isinstance(v, dict)}
    if m.get("history"):  # --append-to / --update operations
        attrs["history"] = m["history"]
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "path": str(path),
        "bytes": size,
        "kind": "bias",
        "format": "nnn bias manifest (--engine ray)",
        "datasets": {"bias": {"shape": [n_rows], "dtype": "float32"}},
        "attrs": attrs,
    }
