"""Ctrl-C and SIGTERM: a killed job removes its temporary output and never publishes a file.

Python turns SIGINT into :class:`KeyboardInterrupt`; by default SIGTERM kills
the process on the spot, leaving its temporary file behind.  With
:func:`install_handlers` (done by the ``nnn`` entry point) both signals raise
at the next Python instruction (SIGTERM as :class:`Terminated`, a
``KeyboardInterrupt``), so ``atomic_output`` removes its temporary file and the
previous output stays untouched; the CLI exits 130 (SIGINT) or 143 (SIGTERM).

Python may raise such an exception inside a ``__del__`` or weakref callback,
where it is swallowed (h5py runs many).  So the handler also records the
signal, and :func:`raise_if_interrupted` (called by ``atomic_output`` just
before it renames) refuses to publish once a signal was received.  A second
SIGTERM kills at once.  ``kill -9`` cannot be caught: it may leave a
``.NAME.*.tmp`` file beside the output (never a half-written output), safe to
delete once no ``nnn`` job is running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

_received: int | None = None
_reported = False  # the signal's one line was printed
_defer_depth = 0
_pending: int | None = None


def _raise_for(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def _on_signal(signum, frame) -> None:
    global _received, _pending
    _received = signum
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _defer_depth:
        _pending = signum  # raised when the deferred section ends (see deferred_signals)
        return
    _raise_for(signum)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """A section that SIGINT/SIGTERM cannot cut in two: a signal that arrives inside is raised when it
    ends (from its last line), so e.g. a rename and the record that it happened are one step.

    Works whichever thread the kernel delivers the signal to (a signal mask on the main thread alone
    does not: BLAS and OpenMP worker threads would take it), since Python always runs the handler in
    the main thread."""
    global _defer_depth, _pending
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
    if _defer_depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        _raise_for(signum)


_published: list[str] = []


def mark_published(path) -> None:
    """Record that ``path`` was renamed into place (complete) by this process."""
    _published.append(str(path))


def published_outputs() -> list[str]:
    """Outputs this process has published so far: after a signal, the CLI names them
    ("interrupted; OUT was already written and is complete") instead of "no output was written"."""
    return list(_published)


def mark_reported() -> None:
    """The line for the received signal has been printed: nobody says it again."""
    global _reported
    _reported = True


def raise_if_unreported() -> None:
    """Raise the received signal again if nobody has said its line yet: a signal that landed where a
    library turned it into a bare exit code (Typer makes any ``KeyboardInterrupt`` a silent ``Exit(130)``,
    e.g. one arriving while the command's context closes) still gets its line and 143/130."""
    if _received is not None and not _reported:
        _raise_for(_received)


def raise_if_interrupted() -> None:
    """Raise again if SIGINT/SIGTERM arrived, even if its first exception was swallowed somewhere."""
    if _received is not None:
        _raise_for(_received)


def _quiet_unraisable(unraisable) -> None:
    """Drop the 'Exception ignored in ...' report of an interrupt swallowed by a finaliser, and of any
    finaliser failing once an interrupt was received (objects cut short by it, collected at exit): the
    command has already said in one line what happened."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt) or _received is not None:
        return
    sys.__unraisablehook__(unraisable)


def install_handlers() -> None:
    """SIGTERM and SIGINT raise (and are remembered); a SIGINT ignored by the parent stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    sys.unraisablehook = _quiet_unraisable


def exit_process(code: int, say: Callable[[str], None]) -> NoReturn:
    """End the process after the command, never leaving a window where a signal kills it silently.

    The interpreter's own teardown restores the default handlers early, so SIGTERM or Ctrl-C arriving
    just after an output was renamed into place would kill the process with no line.  Here a signal is
    only recorded from now on; one received while the command still ended 0 gets its truthful line
    through ``say`` ("Terminated; OUT was already written in full.") and exit 130/143; then the exit
    callbacks run and the process ends without the teardown."""
    global _defer_depth
    _defer_depth += 1  # from here on a signal is recorded, never raised
    for check in range(2):  # after the exit callbacks too: they take a while (Ray, temporary files)
        if code == 0 and _received is not None:
            done = ", ".join(_published)
            what = "Terminated" if _received == signal.SIGTERM else "Interrupted"
            say(f"{what}; {done} was already written in full." if done else f"{what}; no output was written.")
            mark_reported()
            code = EXIT_TERMINATED if _received == signal.SIGTERM else EXIT_INTERRUPTED
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if check == 0:
            with contextlib.suppress(Exception):
                atexit._run_exitfuncs()  # what the teardown would have run (weakref.finalize, Ray)
    os._exit(code)


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
