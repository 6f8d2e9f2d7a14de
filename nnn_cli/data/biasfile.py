"""Bias files (``nnn bias -o``): HDF5 dataset ``bias`` with provenance attributes, or a bare ``.npy``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnn_cli.core.leak import SKETCH_BITS, id_hashes, sketch_codes
from nnn_cli.data.h5 import (
    attr_value,
    create_h5,
    decode_strings,
    is_h5_path,
    open_h5_safe,
    set_attrs,
    short_error,
    split_spec,
    write_strings,
)
from nnn_cli.data.locks import DEFAULT_WAIT, exclusive_locks
from nnn_cli.data.npy import load_npy
from nnn_cli.data.outputs import atomic_output
from nnn_cli.errors import InputError, ParameterError


# ---------------------------------------------------------------------------
@dataclass
class BiasFile:
    bias: np.ndarray  # (N,) float32
    attrs: dict
    ids: np.ndarray | None = None


def read_bias(spec: str | os.PathLike) -> BiasFile:
    """Read a bias file written by ``nnn bias`` (HDF5 dataset ``bias`` or a 1-D ``.npy``)."""
    path, dataset = split_spec(spec, "bias")
    if not path.exists():
        raise InputError(f"{path}: no such file (the bias)")
    if path.suffix.lower() == ".npy":
        arr = load_npy(path, "bias")
        attrs: dict = {}
        ids = None
    elif is_h5_path(path):
        with open_h5_safe(path, "bias file") as f:
            if dataset not in f:
                raise InputError(f"{path}: no dataset {dataset!r}; is this a bias file made by `nnn bias`?")
            try:
                arr = f[dataset][()]
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: cannot read {dataset!r} ({short_error(exc)})") from None
            attrs = {k: attr_value(v) for k, v in f.attrs.items()}
            ids = decode_strings(f["ids"][()]) if "ids" in f else None
    else:
        raise InputError(f"{path}: unknown bias file type; use .h5 or .npy")
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise InputError(f"{path}: bias must be 1-D (N,), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{path}: bias dtype {arr.dtype} is not numeric")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: bias contains NaN or Inf")
    return BiasFile(arr, attrs, ids)


def write_bias(
    path: str | os.PathLike,
    bias: np.ndarray,
    attrs: dict,
    ids: np.ndarray | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``bias`` (N,) float32 atomically to HDF5 (with attributes, ids, extra datasets) or ``.npy``."""
    path = Path(path)
    bias = np.asarray(bias, dtype=np.float32)
    if path.suffix.lower() == ".npy":
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, bias)
        return path
    if not is_h5_path(path):
        raise ParameterError(f"{path}: output must end in .h5, .hdf5 or .npy")
    with atomic_output(path) as tmp:
        with create_h5(tmp) as f:
            f.create_dataset("bias", data=bias)
            if ids is not None:
                write_strings(f, "ids", ids)
            for name, arr in (extra or {}).items():
                f.create_dataset(name, data=arr)
            set_attrs(f, attrs)
    return path


@dataclass
class StoredBias:
    """A bias file as the incremental updates need it: bias, optional top-k scores, ids, attributes."""

    path: Path
    bias: np.ndarray  # (N,) float32
    topk: np.ndarray | None  # (N, k) float32, descending
    ids: np.ndarray | None
    attrs: dict

    @property
    def alpha(self) -> float:
        return float(self.attrs["alpha"])

    @property
    def k(self) -> int:
        return int(self.attrs["k"])

    @property
    def metric(self) -> str:
        return str(self.attrs["metric"])


def load_stored_bias(spec: str | os.PathLike) -> StoredBias:
    """Read an HDF5 bias file written by ``nnn bias`` with the attributes an update needs."""
    path, _ = split_spec(spec, "bias")
    if not is_h5_path(path):
        raise InputError(
            f"{path}: only an HDF5 bias file (.h5) can be updated; a .npy bias records no alpha, k "
            "or top-k scores, so recompute it with `nnn bias ... -o BIAS.h5`"
        )
    bf = read_bias(path)
    missing = [key for key in ("alpha", "k", "metric") if key not in bf.attrs]
    if missing:
        raise InputError(f"{path}: records no {', '.join(missing)}; only bias files made by `nnn bias` can be updated")
    kind = bf.attrs.get("index", "flat")
    if kind != "flat":
        raise InputError(
            f"{path}: was computed with an approximate index ({bf.attrs.get('index_description', kind)}); "
            "updates merge exact scores into its top-k and would not be exact: recompute it with --index flat"
        )
    topk = None
    with open_h5_safe(path, "bias file") as f:
        if "topk" in f:
            topk = np.asarray(f["topk"][()], dtype=np.float32)
    stored = StoredBias(path, bf.bias, topk, bf.ids, bf.attrs)
    try:
        alpha, k = float(stored.alpha), stored.attrs["k"]
        k_ok = float(k) == int(float(k)) and int(float(k)) >= 1
    except (TypeError, ValueError):
        alpha, k_ok = float("nan"), False
    if not np.isfinite(alpha) or not k_ok:
        raise InputError(
            f"{path}: attributes alpha={stored.attrs['alpha']!r}, k={stored.attrs['k']!r} are not a "
            "number and a positive integer; the file is damaged, recompute it with `nnn bias`"
        )
    if topk is not None and not np.isfinite(topk).all():
        raise InputError(
            f"{path}: dataset 'topk' contains NaN or Inf; the file is damaged, recompute it with `nnn bias`"
        )
    if topk is not None and topk.shape != (len(bf.bias), stored.k):
        raise InputError(
            f"{path}: dataset 'topk' has shape {topk.shape}, expected ({len(bf.bias)}, {stored.k}); "
            "the file is damaged, recompute it with `nnn bias`"
        )
    return stored


@contextlib.contextmanager
def locked_bias_update(
    target: str | os.PathLike, output: str | os.PathLike | None = None, wait: float = DEFAULT_WAIT
) -> Iterator[StoredBias]:
    """Read-modify-write of a bias file with no lost update (``--append-to``, ``--update``).

    Locks ``target`` (and ``output`` when it is another file; see :mod:`nnn_cli.data.locks`), then
    loads it; the caller computes and calls :func:`write_bias` inside the ``with``.  A second run on
    the same file waits up to ``wait`` seconds for the first, then raises ``BusyError`` (exit 2);
    once it gets the lock it reads the first run's result, so both updates are kept.
    """
    path, _ = split_spec(target, "bias")
    with exclusive_locks([path, output], wait, "bias file"):
        yield load_stored_bias(target)


def update_bias_file(
    target: str | os.PathLike, compute, output: str | os.PathLike | None = None, wait: float = DEFAULT_WAIT
) -> Path:
    """``compute(stored) -> (bias, topk or None, ids, attrs)`` under the lock, written to ``output``
    (default: ``target``) before the lock is released."""
    out = Path(output) if output is not None else split_spec(target, "bias")[0]
    with locked_bias_update(target, output, wait) as stored:
        b, topk, ids, attrs = compute(stored)
        return write_bias(out, b, attrs, ids=ids, extra={"topk": topk} if topk is not None else None)


def read_bias_datasets(spec: str | os.PathLike, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Extra datasets of an HDF5 bias file among ``names`` (those present); ``{}`` for ``.npy`` files."""
    path, _ = split_spec(spec, "bias")
    if not is_h5_path(path) or not path.exists():
        return {}
    with open_h5_safe(path, "bias file") as f:
        try:
            return {name: np.asarray(f[name][()]) for name in names if name in f}
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read {', '.join(names)} ({short_error(exc)})") from None


SKETCH_DATASETS = ("leak_sketch_codes", "leak_sketch_id_hashes")


def carried_sketch(stored_path, reference_unchanged: bool, new_reference: Any, attrs: dict) -> dict:
    """The sketch datasets of an updated bias file: kept as they are after ``--append-to`` (same reference),
    extended with the new queries' codes and id hashes after ``--update --reference-add``.  A file that
    recorded none gets none (and ``attrs`` loses any stale sketch attributes)."""
    found = read_bias_datasets(stored_path, SKETCH_DATASETS)
    if "leak_sketch_codes" not in found:
        for key in ("leak_sketch_bits", "leak_sketch_rows"):
            attrs.pop(key, None)
        return {}
    if reference_unchanged or new_reference is None:
        return found
    codes = np.concatenate([found["leak_sketch_codes"], sketch_codes(new_reference.read("ip"))])
    out = {"leak_sketch_codes": codes}
    new_ids = new_reference.ids()
    if "leak_sketch_id_hashes" in found and new_ids is not None:
        out["leak_sketch_id_hashes"] = np.union1d(found["leak_sketch_id_hashes"], id_hashes(new_ids))
    attrs.update({"leak_sketch_bits": SKETCH_BITS, "leak_sketch_rows": int(len(codes))})
    return out
