"""NumPy files read safely: pickles refused, headers checked; ``-`` reads one array from stdin."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np

from nnn_cli.core.topk import aligned_empty
from nnn_cli.data.h5 import check_h5_self_contained, h5py_module, short_error
from nnn_cli.errors import InputError

STDIN = "-"
_FD_PATHS = ("/dev/stdin", "/dev/fd/", "/proc/self/fd/")


def is_read_once(path: str | os.PathLike) -> bool:
    """True for ``-`` and for anything that is not a regular file or folder: ``/dev/stdin``, ``/dev/fd/N``
    of a pipe or a process substitution ``<(...)``, a named pipe, a character device.  Such an input can be
    read only once, so every reader takes it whole, once (the one place this is decided)."""
    if str(path) == STDIN or str(path).startswith(_FD_PATHS):  # a descriptor, whatever it points at
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def read_pipe_embeddings(path: Path, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`read_stdin_embeddings` for a read-once path (``/dev/fd/N``, a FIFO): messages name the path."""
    try:
        with open(path, "rb") as fh:
            return read_stdin_embeddings(label, fh)
    except InputError as exc:
        raise InputError(str(exc).replace("<stdin>", str(path)).replace("standard input", "the pipe")) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {label} ({exc.strerror or exc})") from None


def read_stdin_array(label: str) -> np.ndarray:
    """One array from standard input: ``.npy`` bytes (pickles refused) or an HDF5 file's ``embeddings``."""
    return read_stdin_embeddings(label)[0]


def read_stdin_embeddings(label: str, stream=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(array, ids)`` from standard input (or the binary ``stream``): ``.npy`` bytes (no ids), or an
    HDF5 file's ``embeddings`` with its ``ids`` when it has them (what ``nnn embed - -o -`` writes)."""
    import io as _io

    from nnn_cli.data.h5 import decode_strings

    data = (stream if stream is not None else sys.stdin.buffer).read()
    if not data:
        raise InputError(
            f"<stdin>: no data on standard input (the {label}); pipe a .npy file, e.g. `cat q.npy | nnn ...`"
        )
    if data.startswith(b"\x89HDF\r\n\x1a\n"):
        h5py = h5py_module()
        try:
            with h5py.File(_io.BytesIO(data), "r") as f:
                check_h5_self_contained(f, "<stdin>")
                if "embeddings" not in f:
                    raise InputError("<stdin>: HDF5 data on standard input has no dataset 'embeddings'")
                arr = f["embeddings"][()]
                ids = None
                if "ids" in f:
                    if f["ids"].shape != arr.shape[:1]:
                        raise InputError(
                            f"<stdin>: dataset 'ids' has shape {f['ids'].shape} but 'embeddings' "
                            f"has {arr.shape[0] if arr.ndim else 0} rows"
                        )
                    ids = decode_strings(f["ids"][()])
                return arr, ids
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(
                f"<stdin>: truncated or damaged HDF5 data on standard input "
                f"({len(data)} bytes read; {short_error(exc)})"
            ) from None
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
    return arr, None


def load_npy(path: Path, what: str, mmap: bool = False) -> np.ndarray:
    """The one ``.npy`` reader for files we are given: pickles refused, a bad file one line naming it.

    ``what`` names the array in errors (``bias``, ``ground-truth``, ``shard``...); ``mmap`` maps it
    read-only instead of loading it (embedding files and shards: only headers are needed up front).
    """
    try:
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise InputError(f"{path}: not a .npy file (no NumPy header); write it with numpy.save")
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        msg = short_error(exc)
        if "allow_pickle" in msg or "object" in msg.lower():
            raise InputError(f"{path}: holds Python objects (pickles are refused); save a numeric array") from None
        raise InputError(f"{path}: not a readable .npy {what} file ({msg}); it may be truncated") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy {what} file ({short_error(exc)})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: not a .npy array (the {what})")
    return arr


class NpyRows:
    """Row slices of a C-ordered ``.npy`` file read with plain file reads (no memory map).

    A memory map leaves every page it touched counted in the process's
    resident size until it is unmapped, so streaming a large ``.npy`` through
    one would grow RSS to the file size; reading blocks keeps it at one block.
    Fortran-ordered files fall back to a memory map.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        fmt = np.lib.format
        with open(self.path, "rb") as fh:
            version = fmt.read_magic(fh)
            readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            if version in readers:
                shape, fortran, dtype = readers[version](fh)
                self.offset = fh.tell()
            else:  # a newer header version: let numpy parse it and use a memory map
                arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
                shape, fortran, dtype = arr.shape, True, arr.dtype
        self.shape, self.fortran, self.dtype = tuple(shape), fortran, np.dtype(dtype)
        self.row_items = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        self._fh = None if fortran else open(self.path, "rb")
        self._map = np.load(self.path, mmap_mode="r", allow_pickle=False) if fortran else None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if self._map is not None:
            return self._map[rows]
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("NpyRows supports contiguous row slices only")
        count = max(0, stop - start)
        assert self._fh is not None  # no memory map: the file is open
        self._fh.seek(self.offset + start * self.row_items * self.dtype.itemsize)
        out = aligned_empty((count,) + self.shape[1:], self.dtype)  # GEMM operands as they are, no copy
        got = self._fh.readinto(out.reshape(-1).view(np.uint8).data) if out.size else 0
        if got != out.nbytes:
            raise ValueError(f"{self.path}: file ends early (truncated?)")
        return out
