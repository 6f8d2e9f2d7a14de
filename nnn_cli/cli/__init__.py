"""The `nnn` command line: each command parses, calls one job in :mod:`nnn_cli.jobs`, renders.

:func:`main` installs the signal handlers before anything heavy is imported, so a Ctrl-C or
SIGTERM at any moment ends with one line and 130/143, never a traceback.  ``app`` (the Typer
application) is loaded on first use.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console entry point (``nnn``)."""
    from nnn_cli.signals import Terminated, exit_code, install_handlers

    try:
        install_handlers()
        from nnn_cli.cli.application import run
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"{'Terminated' if isinstance(exc, Terminated) else 'Interrupted'}; no output was written.\n")
        sys.exit(exit_code(exc))
    run()


def __getattr__(name: str):
    if name == "app":
        from nnn_cli.cli.application import app

        return app
    raise AttributeError(f"module 'nnn_cli.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
