"""The `nnn` command line: each command parses, calls one job in :mod:`nnn_cli.jobs`, renders.

:func:`main` installs the signal handlers before anything heavy is imported, so a Ctrl-C or
SIGTERM at any moment ends with one line and 130/143, never a traceback.  ``app`` (the Typer
application) is loaded on first use.
"""

from __future__ import annotations

import contextlib
import sys


def main() -> None:
    """Console entry point (``nnn``)."""
    from nnn_cli.signals import Terminated, exit_code, exit_process, install_handlers, mark_reported, published_outputs

    def say(line: str) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(line + "\n")

    def interrupted(exc: KeyboardInterrupt) -> int:
        done = ", ".join(published_outputs())
        what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
        say(f"{what}; {done} was already written in full." if done else f"{what}; no output was written.")
        mark_reported()
        return exit_code(exc)

    code = 1
    try:
        try:
            install_handlers()
            from nnn_cli.cli.application import run

            run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
            if exc.code is not None and not isinstance(exc.code, int):
                say(str(exc.code))
    except KeyboardInterrupt as exc:  # a signal after the command's own handling (or while importing)
        code = interrupted(exc)
    while True:  # a signal may still land before exit_process defers signals: say so, then exit
        try:
            exit_process(code, say)
        except KeyboardInterrupt as exc:
            code = code or interrupted(exc)


def __getattr__(name: str):
    if name == "app":
        from nnn_cli.cli.application import app

        return app
    raise AttributeError(f"module 'nnn_cli.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
