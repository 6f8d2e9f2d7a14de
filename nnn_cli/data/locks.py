"""Exclusive locks beside an output that is read, modified and written back (``--append-to``,
``--update``, ``nnn embed``'s partial store), so that no update is ever lost.

:func:`exclusive_lock` takes ``flock(2)`` on ``.NAME.lock`` beside ``NAME`` (a hidden file, not the
``NAME.lock`` the docs suggest for ``flock(1)`` around a whole command, so both can be used at once).
A second writer waits up to ``wait`` seconds, then raises :class:`~nnn_cli.errors.BusyError` naming
the holder (pid, host, start time and command recorded in the lock file).  The lock dies with its
process (also on ``kill -9``); the small lock file stays and is reused.  POSIX only (fcntl); on other
systems the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
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
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError:
        raise OutputError(f"{target}: output folder {target.parent} does not exist") from None
    except OSError as exc:
        raise OutputError(f"{target}: cannot create the lock file {path} ({exc.strerror})") from None
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
