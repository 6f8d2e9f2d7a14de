"""Atomic outputs: every check on an output path before any work, then temp file, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nnn_cli.data.h5 import split_spec
from nnn_cli.errors import InputError, NNNError, OutputError, ParameterError
from nnn_cli.signals import deferred_signals, mark_published, raise_if_interrupted


# ---------------------------------------------------------------------------
# Atomic outputs
# ---------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched,
    so a reader sees either the previous complete file or the new complete file.
    An OS error (disk full, read-only file system) becomes :class:`OutputError`
    (one line, exit 2).  A signal that arrives once the rename is done is raised
    after it, with ``exc.nnn_published = str(path)`` set, and the path is listed
    by :func:`nnn_cli.signals.published_outputs`: the CLI must then say the
    output was written (it is complete), not "no output was written".
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{path}: output folder {parent} does not exist")
    tmp: Path | None = None
    published = False
    try:
        with deferred_signals():  # a signal between mkstemp and `tmp = ...` would leave the temporary file behind
            try:
                fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
                os.close(fd)
                tmp = Path(tmp_name)
            except PermissionError:
                raise InputError(f"{path}: cannot create files in {parent} (permission denied)") from None
            except OSError as exc:
                raise output_error(path, exc) from None
        yield tmp
        raise_if_interrupted()  # a Ctrl-C/SIGTERM swallowed while writing must not publish the file
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        with deferred_signals():  # the rename and the record that it happened are one step for signals
            raise_if_interrupted()
            os.replace(tmp, path)
            published = True
            mark_published(path)
            fsync_dir(parent)
    except BaseException as exc:
        if published:
            # the new output is in place and complete: say so (see nnn_cli.signals.published_outputs)
            with contextlib.suppress(AttributeError, TypeError):
                exc.nnn_published = str(path)  # type: ignore[attr-defined]  # a marker attribute, read by signals
            raise
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, NNNError):
            raise output_error(path, exc) from None
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file in ``path`` durable (fsync the folder; best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def output_error(path: str | os.PathLike, exc: OSError) -> NNNError:
    """One line for an OS error while writing ``path``: disk full, read-only, quota... (exit 2)."""
    text = f"{exc.strerror or ''} {exc}".lower()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "no space left" in text or "quota" in text:
        return OutputError(f"disk full writing {path}")
    if exc.errno == errno.EROFS or "read-only file system" in text:
        return OutputError(f"cannot write {path}: read-only file system")
    if exc.errno in (errno.EACCES, errno.EPERM) or "permission denied" in text:
        return OutputError(f"cannot write {path}: permission denied")
    reason = exc.strerror or str(exc).splitlines()[0][:120] or type(exc).__name__
    return OutputError(f"cannot write {path}: {reason}")


def check_output_path(
    output: str | os.PathLike,
    inputs: list[str | os.PathLike | None],
    suffixes: tuple[str, ...] | None = None,
    what: str = "output",
) -> Path:
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
