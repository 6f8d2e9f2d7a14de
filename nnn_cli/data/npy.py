"""NumPy files read safely: pickles refused, headers checked; ``-`` reads one array from stdin."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from nnn_cli.errors import InputError
from nnn_cli.data.h5 import check_h5_self_contained, h5py_module, short_error

STDIN = "-"


def read_stdin_array(label: str) -> np.ndarray:
    """One array from standard input: ``.npy`` bytes (pickles refused) or an HDF5 file's ``embeddings``."""
    import io as _io

    data = sys.stdin.buffer.read()
    if not data:
        raise InputError(f"<stdin>: no data on standard input (the {label}); pipe a .npy file, e.g. `cat q.npy | nnn ...`")
    if data.startswith(b"\x89HDF\r\n\x1a\n"):
        h5py = h5py_module()
        with h5py.File(_io.BytesIO(data), "r") as f:
            check_h5_self_contained(f, "<stdin>")
            if "embeddings" not in f:
                raise InputError("<stdin>: HDF5 data on standard input has no dataset 'embeddings'")
            return f["embeddings"][()]
    if not data.startswith(b"\x93NUMPY"):
        raise InputError("<stdin>: not .npy data (no NumPy header); pipe a file written by numpy.save")
    try:
        arr = np.load(_io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        msg = short_error(exc)
        if "allow_pickle" in msg or "object" in msg.lower():
            raise InputError("<stdin>: holds Python objects (pickles are refused); save a numeric array") from None
        raise InputError(f"<stdin>: not .npy data ({msg}); pipe a file written by numpy.save") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"<stdin>: not .npy data ({short_error(exc)})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError("<stdin>: expected one .npy array, got an .npz archive")
    return arr


def load_npy(path: Path, what: str) -> np.ndarray:
    """A small whole ``.npy`` array (bias, truth, labels), pickles refused; ``what`` names it in errors."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy {what} file ({short_error(exc)})") from None


