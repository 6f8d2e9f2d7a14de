"""Atomic outputs: every check on an output path before any work, then temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from nnn_cli.errors import InputError, ParameterError
from nnn_cli.signals import raise_if_interrupted
from nnn_cli.data.h5 import split_spec

# ---------------------------------------------------------------------------
# Atomic outputs
# ---------------------------------------------------------------------------
def _hold_signals():
    """Hold SIGINT/SIGTERM back (POSIX, main thread); returns the mask to restore, or None."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _release_signals(held) -> None:
    """Deliver what :func:`_hold_signals` held back."""
    if held is not None:
        import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched,
    so a reader sees either the previous complete file or the new complete file.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: output folder {parent} does not exist")
    tmp: Path | None = None
    held = _hold_signals()  # a signal between mkstemp and `tmp = ...` would leave the temporary file behind
    try:
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            tmp = Path(tmp_name)
        except PermissionError:
            raise InputError(f"{path}: cannot create files in {parent} (permission denied)") from None
        finally:
            _release_signals(held)  # a signal held back is raised here, inside the cleanup's reach
        yield tmp
        raise_if_interrupted()  # a Ctrl-C/SIGTERM swallowed while writing must not publish the file
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            dfd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike | None],
                      suffixes: tuple[str, ...] | None = None, what: str = "output") -> Path:
    """Every check on an output path, done before any work: the suffix (when ``suffixes`` is given),
    the folder exists and is writable, it is not a folder, and it is none of the inputs."""
    out = Path(output)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ParameterError(f"{out}: {what} folder {parent} does not exist")
    if out.is_dir():
        raise ParameterError(f"{out}: is a directory; give a file name for the {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ParameterError(f"{out}: cannot write into {parent} (permission denied or read-only)")
    for spec in inputs:
        if spec is None:
            continue
        in_path, _ = split_spec(spec)
        try:
            if in_path.exists() and out.exists() and os.path.samefile(in_path, out):
                raise ParameterError(f"{out}: is also an input; refusing to overwrite it")
        except OSError:
            continue
    if suffixes is not None and out.suffix.lower() not in suffixes:
        listed = ", ".join(suffixes[:-1]) + (" or " if len(suffixes) > 1 else "") + suffixes[-1]
        raise ParameterError(f"{out}: {what} must end in {listed}")
    return out


def write_json(path: str | os.PathLike, obj: dict) -> Path:
    """Write a JSON document atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return path
