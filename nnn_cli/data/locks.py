"""Exclusive locks beside an output that is read, modified and written back (``--append-to``,
``--update``, ``nnn embed``'s partial store), so that no update is ever lost.

:func:`exclusive_lock` takes ``flock(2)`` on ``.NAME.lock`` beside ``NAME`` (a hidden file, not the
``NAME.lock`` the docs suggest for ``flock(1)`` around a whole command, so both can be used at once).
A second writer waits up to ``wait`` seconds, then raises :class:`~nnn_cli.errors.BusyError` naming
the holder (pid, host, start time and command recorded in the lock file).  The lock dies with its
process (also on ``kill -9``); the small lock file stays and is reused.  POSIX only (fcntl); on other
systems the lock is a no-op.

The lock path sits beside a user's file, possibly in a folder others can write, so it cannot be turned
into a weapon: it is opened with ``O_NOFOLLOW | O_NONBLOCK`` and never ``O_TRUNC``, and refused (one line,
:class:`~nnn_cli.errors.OutputError`, exit 2) unless it is a regular file of our own user with a single
link, as a lock file we created is.  A planted symlink, hard link, FIFO, device or folder is left as it
is, and so is whatever it points to.  (``filelock`` opens with ``O_NOFOLLOW`` too, but takes a FIFO or a
hard link as its lock file and keeps no holder record, so the flags and checks are ours.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from nnn_cli.errors import BusyError, OutputError

DEFAULT_WAIT = 10.0
"""Seconds a second writer waits for the first before giving up (the CLI's ``--wait``)."""

POLL = 0.05


def lock_path(target: str | os.PathLike) -> Path:
    """``.NAME.lock`` beside ``target``."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "another process"


_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC


def _refuse(target: Path, path: Path, what: str) -> OutputError:
    return OutputError(
        f"{target}: the lock file {path} {what}; refusing to use it (remove it if no nnn run is using it)"
    )


def open_lock_file(target: Path, path: Path) -> int:
    """A descriptor on the lock file ``path``, created if missing: never through a symlink, never truncated, and
    only a regular file of ours with one link (one line naming it otherwise; nothing is changed)."""
    if os.path.islink(path):
        raise _refuse(target, path, "is a symbolic link")
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o666)
    except FileNotFoundError:
        raise OutputError(f"{target}: output folder {target.parent} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(target, path, "is a symbolic link") from None
        if exc.errno == errno.EISDIR:
            raise _refuse(target, path, "is a folder") from None
        raise OutputError(f"{target}: cannot create the lock file {path} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(target, path, "is not a regular file")
        if info.st_nlink != 1:
            raise _refuse(target, path, f"has {info.st_nlink} hard links")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise _refuse(target, path, f"belongs to another user (uid {info.st_uid})")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, wait: float = DEFAULT_WAIT, what: str = "file") -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (a path that need not exist yet) for the ``with`` body."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield lock_path(target)
        return
    target = Path(target)
    path = lock_path(target)
    fd = open_lock_file(target, path)
    try:
        deadline = time.monotonic() + max(0.0, float(wait))
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"{target}: cannot lock {path} ({exc.strerror})") from None
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"{target}: another nnn run is writing this {what} ({_holder(fd)}); "
                        f"waited {wait:g}s: try again later or give --wait a longer time"
                    ) from None
                time.sleep(POLL)
        with contextlib.suppress(OSError):
            note = (
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(os.path.basename(a) for a in sys.argv[:2])}"
            )
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode() + b"\n", 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_locks(targets: list, wait: float = DEFAULT_WAIT, what: str = "file") -> Iterator[None]:
    """Locks on several targets (distinct, in a fixed order so two runs cannot deadlock)."""
    unique = sorted({str(Path(t).resolve()) for t in targets if t is not None})
    with contextlib.ExitStack() as stack:
        for t in unique:
            stack.enter_context(exclusive_lock(t, wait, what))
        yield
