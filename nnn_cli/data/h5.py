"""HDF5 access that untrusted files cannot abuse: safe opening, self-containment checks, attributes."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator
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
            # follow the chain without opening its target (which may be an external link): a loop is
            # a damaged file; a dangling link is left alone (it only matters if it is the dataset asked for)
            seen = {"/" + name.lstrip("/")}
            target = link.path
            try:
                while isinstance(link, h5py.SoftLink):
                    if target in seen or len(seen) > 64:
                        problems.append(f"{name!r} is a soft link loop ({' -> '.join([*sorted(seen)[:3], target])})")
                        return
                    seen.add(target)
                    link = f.get(target, getlink=True)
                    target = getattr(link, "path", target)
            except (RuntimeError, KeyError, OSError, ValueError) as exc:  # "too many links" on the way
                problems.append(f"{name!r} is a soft link that cannot be resolved ({short_error(exc)})")
            return
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                outside = sorted({m.file_name for m in obj.virtual_sources() if m.file_name != "."})
                if outside:
                    problems.append(f"{name!r} is a virtual dataset reading {', '.join(outside)}")
            if obj.external:
                problems.append(f"{name!r} stores its data in external file {obj.external[0][0]}")

    try:
        f.visit_links(visit)
    except (RuntimeError, OSError, ValueError) as exc:
        raise InputError(f"{path}: damaged HDF5 file: its links cannot be walked ({short_error(exc)})") from None
    if problems:
        if "soft link" in problems[0]:
            raise InputError(f"{path}: {problems[0]}; the file is damaged")
        raise InputError(
            f"{path}: {problems[0]}; refusing to follow data outside the file "
            "(copy the data into the file, e.g. with h5copy or h5py)"
        )


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
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value)
        ):
            value = np.asarray(value)  # shapes and other number lists stay numeric
        elif isinstance(value, (dict, list, tuple)):
            value = json.dumps(value)
        obj.attrs[key] = value


class _GuardedFile(io.RawIOBase):
    """A file object for h5py that never lets HDF5 see a failed write.

    HDF5 does not survive a failed write: on a full disk h5py raises, then crashes (segfault) when
    the half-written file is closed or at exit.  Here the first OS error is recorded and later
    writes are skipped (the position still moves on), so HDF5 closes normally; :func:`create_h5`
    then raises the recorded error, which ``atomic_output`` turns into one line (exit 2)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.raw_file = open(path, "w+b", buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    # After close (an interrupt can cut HDF5's own close short, and h5py then finishes closing its objects
    # when they are collected) every call is a quiet no-op: an error there could only be printed as an
    # "Exception ignored" traceback at exit, and the temporary file is being deleted anyway.
    def seek(self, pos: int, whence: int = 0) -> int:
        return 0 if self.raw_file.closed else self.raw_file.seek(pos, whence)

    def tell(self) -> int:
        return 0 if self.raw_file.closed else self.raw_file.tell()

    def readinto(self, buffer) -> int:
        return 0 if self.raw_file.closed else self.raw_file.readinto(buffer)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if self.raw_file.closed:
            return n
        if self.error is None:
            try:
                done = 0
                while done < n:
                    done += self.raw_file.write(view[done:])
                return n
            except OSError as exc:
                self.error = exc
        self.raw_file.seek(n, os.SEEK_CUR)
        return n

    def truncate(self, size: int | None = None) -> int:
        if self.raw_file.closed:
            return 0 if size is None else size
        try:
            return self.raw_file.truncate(size)
        except OSError as exc:
            self.error = self.error or exc
            return self.tell() if size is None else size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        try:
            self.raw_file.close()
        except OSError as exc:
            self.error = self.error or exc
        super().close()


@contextlib.contextmanager
def create_h5(path: str | os.PathLike) -> Iterator:
    """``h5py.File(path, "w")`` that reports a full disk (or any OS error) as that ``OSError``
    after closing cleanly, instead of crashing inside HDF5 (see :class:`_GuardedFile`)."""
    h5py = h5py_module()
    guard = _GuardedFile(path)
    try:
        with h5py.File(guard, "w") as f:
            yield f
    except Exception:
        guard.close()
        if guard.error is not None:
            raise guard.error from None
        raise
    except BaseException:
        guard.close()
        raise
    guard.close()
    if guard.error is not None:
        raise guard.error


def write_strings(f, name: str, values) -> None:
    """A dataset of UTF-8 strings (ids) in an open HDF5 file."""
    f.create_dataset(name, data=np.asarray(values, dtype=object), dtype=h5py_module().string_dtype())
