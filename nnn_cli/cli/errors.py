"""The one mapping from exceptions to exit codes: NNNError -> 2 with one line, Ctrl-C -> 130,
SIGTERM -> 143, a closed pipe -> 0, anything else -> 1 (``NNN_DEBUG=1`` shows the traceback)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import typer

from nnn_cli.cli.render import err_console, silence_stdout
from nnn_cli.errors import NNNError
from nnn_cli.signals import Terminated, exit_code, published_outputs


def fail(message: str, code: int = 2) -> None:
    """Print one error line to stderr and exit."""
    err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: Callable) -> Callable:
    """Decorate a command: library exceptions become one line and an exit code (see the module docstring)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except NNNError as exc:
            fail(str(exc), 2)
        except BrokenPipeError:
            silence_stdout()
            raise typer.Exit(0) from None
        except KeyboardInterrupt as exc:
            what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
            done = getattr(exc, "nnn_published", None) or ", ".join(published_outputs())
            tail = f"{done} was already written in full." if done else "no output was written."
            err_console.print(f"{what}; {tail}", markup=False)
            raise typer.Exit(exit_code(exc)) from None
        except MemoryError:
            fail("out of memory; use --memory-budget or smaller inputs", 1)
        except Exception as exc:
            if os.environ.get("NNN_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (set NNN_DEBUG=1 for the traceback)", 1)

    return wrapper
