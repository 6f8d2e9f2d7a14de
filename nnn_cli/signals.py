"""Termination signals: SIGTERM is handled like Ctrl-C, so a killed job cleans up its temporary output.

Python turns SIGINT into :class:`KeyboardInterrupt`; by default SIGTERM kills
the process on the spot and a half-written temporary file stays behind.  With
:func:`handle_sigterm` installed, SIGTERM raises :class:`Terminated` (a
``KeyboardInterrupt``) at the next Python instruction, so ``atomic_output``
removes its temporary file and the previous output stays untouched; the CLI
then exits with 143 (128 + SIGTERM).  A second SIGTERM kills at once.
``kill -9`` cannot be caught: it may leave a ``.NAME.*.tmp`` file beside the
output (never the output itself half-written), safe to delete.
"""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def handle_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` (only possible from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
