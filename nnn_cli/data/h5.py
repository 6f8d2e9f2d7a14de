"""HDF5 access that untrusted files cannot abuse: safe opening, self-containment checks, attributes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nnn_cli.errors import InputError

H5_SUFFIXES = (".h5", ".hdf5", ".he5")


def h5py_module():
    import h5py

    return h5py


def is_h5_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(H5_SUFFIXES)


def split_spec(spec: str | os.PathLike, default_dataset: str = "embeddings") -> tuple[Path, str]:
    """Split ``FILE.h5:DATASET`` into (path, dataset); plain paths get ``default_dataset``."""
    text = str(spec)
    if not os.path.exists(text) and ":" in text:
        head, _, tail = text.rpartition(":")
        if is_h5_path(head) and tail:
            return Path(head), tail
    return Path(text), default_dataset


def _open_h5(path: Path, what: str = "file"):
    h5py = h5py_module()
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected an HDF5 {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({short_error(exc)})") from None


def open_h5_safe(path: Path, what: str = "file"):
    """Open an HDF5 file for reading, refusing links to data outside it (see :func:`check_h5_self_contained`)."""
    f = _open_h5(path, what)
    try:
        check_h5_self_contained(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_h5_self_contained(f, path: str | os.PathLike) -> None:
    """Refuse an HDF5 file whose datasets read from other files.

    External links, virtual datasets with sources in another file and
    datasets with external raw storage would let an untrusted file make us
    read any path on this machine; they are refused with :class:`InputError`.
    """
    h5py = h5py_module()
    problems: list[str] = []

    def visit(name: str) -> None:
        link = f.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{name!r} is an external link to {link.filename}:{link.path}")
            return
        if isinstance(link, h5py.SoftLink):
            return
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                outside = sorted({m.file_name for m in obj.virtual_sources() if m.file_name != "."})
                if outside:
                    problems.append(f"{name!r} is a virtual dataset reading {', '.join(outside)}")
            if obj.external:
                problems.append(f"{name!r} stores its data in external file {obj.external[0][0]}")

    f.visit_links(visit)
    if problems:
        raise InputError(f"{path}: {problems[0]}; refusing to follow data outside the file "
                         "(copy the data into the file, e.g. with h5copy or h5py)")


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def decode_strings(values) -> np.ndarray:
    out = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
    return np.asarray(out, dtype=object)


def attr_value(v):
    """An HDF5 attribute as a plain Python value (str, int, float, list) for JSON and comparisons."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def set_attrs(obj, attrs: dict) -> None:
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)) and value and all(
                isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value):
            value = np.asarray(value)  # shapes and other number lists stay numeric
        elif isinstance(value, (dict, list, tuple)):
            value = json.dumps(value)
        obj.attrs[key] = value


