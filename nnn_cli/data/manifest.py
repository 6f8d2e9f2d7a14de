"""Bias manifests: the output folder of `nnn bias --engine ray` (``manifest.json`` + per-block files),
read back as one bias wherever a bias file is accepted (``search``, ``eval``, ``info``), by path or URL."""

from __future__ import annotations

import numpy as np

from nnn_cli.data import objstore
from nnn_cli.data.biasfile import BiasFile
from nnn_cli.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "nnn-ray-bias/1"


def is_manifest(spec, storage_options: dict | None = None) -> bool:
    """True when ``spec`` is a folder/URL holding a ``manifest.json`` written by :func:`ray_bias`."""
    try:
        return objstore.exists(objstore.join(str(spec), MANIFEST), storage_options)
    except Exception:
        return False


def read_manifest(spec, storage_options: dict | None = None) -> dict:
    m = objstore.read_json(objstore.join(str(spec), MANIFEST), storage_options)
    if m.get("format") != FORMAT:
        raise InputError(f"{spec}: {MANIFEST} is not an nnn bias manifest (format {m.get('format')!r})")
    return m


def missing_blocks(m: dict) -> list[int]:
    """The blocks of a manifest's plan that are not done yet (an unfinished run)."""
    return [b for b in range(int(m["plan"]["blocks"])) if str(b) not in m["blocks_done"]]


def read_manifest_bias(spec, storage_options: dict | None = None, with_topk: bool = False) -> BiasFile:
    """A manifest folder as one bias (N,) float32 :class:`nnn_cli.data.biasfile.BiasFile` (attrs: params + inputs);
    ``with_topk`` also loads the per-block top-k into ``attrs['topk']``.  Refuses an unfinished run."""
    m = read_manifest(spec, storage_options)
    n_blocks = m["plan"]["blocks"]
    missing = missing_blocks(m)
    if missing:
        raise InputError(
            f"{spec}: unfinished: {len(missing)} of {n_blocks} blocks not done "
            f"(first: {missing[0]}); finish it with --resume"
        )
    parts, topk = [], []
    for b in range(n_blocks):
        rec = m["blocks_done"][str(b)]
        arr = objstore.read_npy(objstore.join(str(spec), rec["file"]), storage_options)
        if arr.shape != (rec["rows"][1] - rec["rows"][0],):
            raise InputError(f"{spec}: {rec['file']} holds {arr.shape} values, expected rows {rec['rows']}")
        parts.append(arr)
        if with_topk:
            # an --update rewrites blocks under new names (``topk_file``); older runs use the plain name
            topk.append(
                objstore.read_npy(
                    objstore.join(str(spec), rec.get("topk_file", f"blocks/topk_{b:06d}.npy")), storage_options
                )
            )
    bias = np.concatenate(parts).astype(np.float32, copy=False)
    # the engine's input fingerprints are sampled (shard table + first/last 64 KiB of each shard), not the
    # full-content hash that `nnn bias` records: named apart, so the local stale-file check does not
    # compare the two kinds (the row count and the metric are still checked)
    attrs = {
        **m["params"],
        "engine": "ray",
        "gallery_sampled_fingerprint": m["inputs"]["gallery"]["fingerprint"],
        "reference_sampled_fingerprint": m["inputs"]["reference"]["fingerprint"],
        "n": int(len(bias)),
    }
    if isinstance(attrs.get("index"), dict):  # made through an index: the options asked for, flattened
        asked = attrs.pop("index")
        attrs.update(
            {"index": asked.get("index")},
            **{f"index_{key}": v for key, v in asked.items() if key != "index" and v is not None},
        )
    for part in ("gallery", "reference"):  # parts added by --append-to / --update
        if m["inputs"].get(f"{part}_parts"):
            attrs[f"{part}_parts"] = 1 + len(m["inputs"][f"{part}_parts"])
    if with_topk:
        attrs["topk"] = np.vstack(topk)
    return BiasFile(bias, attrs, None)


def load_bias(spec, storage_options: dict | None = None) -> BiasFile:
    """Any bias input: a bias file (``.h5``/``.npy``), or a manifest folder or URL from `nnn bias --engine ray`."""
    from pathlib import Path

    from nnn_cli.data.biasfile import read_bias

    text = str(spec)
    if objstore.is_url(text) or Path(text).is_dir():
        if Path(text).is_dir() and not (Path(text) / MANIFEST).exists():
            raise InputError(
                f"{text}: is a folder without {MANIFEST}; give a bias file (.h5/.npy) or the output "
                "folder of `nnn bias --engine ray`"
            )
        if objstore.is_url(text) and not is_manifest(text, storage_options):
            raise InputError(
                f"{text}: no {MANIFEST} there (or it cannot be read); give the output of "
                "`nnn bias --engine ray` (URLs need the ray extra: .venv/bin/pip install -e '.[ray]' in the checkout)"
            )
        return read_manifest_bias(text, storage_options)
    return read_bias(spec)
