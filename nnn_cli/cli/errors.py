"""The one mapping from exceptions to exit codes: NNNError -> 2 with one line, Ctrl-C -> 130,
SIGTERM -> 143, a closed pipe -> 0, anything else -> 1 (``NNN_DEBUG=1`` shows the traceback).

Usage errors found while parsing (Click's: a bad or missing value, an unknown option, a value from an
environment variable) take the same road: :func:`usage_error` turns them into a
:class:`~nnn_cli.errors.ParameterError` whose one line names the option, ``Error: <what> (<option>)``,
and :func:`fail` prints it with exit 2.  :class:`NNNGroup` does this for every command of the app,
including commands and options added later.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import typer
from typer.core import TyperGroup

try:  # Typer >= 0.22 carries its own copy of Click
    from typer._click import exceptions as click_exceptions
    from typer._click.core import ParameterSource
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older Typer on the click package
    from click import exceptions as click_exceptions  # type: ignore[no-redef]
    from click.core import ParameterSource  # type: ignore[assignment]
    from click.globals import get_current_context  # type: ignore[no-redef]

from nnn_cli.cli.render import drop_notes, err_console, flush_stdout, release_notes, silence_stdout
from nnn_cli.errors import NNNError, ParameterError
from nnn_cli.signals import Terminated, exit_code, mark_reported, published_outputs, raise_if_unreported


def fail(message: str, code: int = 2) -> None:
    """Print one error line to stderr and exit."""
    err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _option_name(param: Any, ctx: Any) -> str:
    """How the user gave ``param``: its long option (or argument metavar), or the environment variable."""
    opts = [o for o in getattr(param, "opts", []) or [] if o.startswith("--")] or list(getattr(param, "opts", []) or [])
    name = opts[0] if opts and getattr(param, "param_type_name", "") == "option" else None
    if name is None:
        name = str(getattr(param, "metavar", None) or getattr(param, "name", "") or "").upper() or "argument"
    envvar = getattr(param, "envvar", None)
    if ctx is not None and envvar and getattr(param, "name", None):
        try:
            from_env = ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
        except Exception:  # pragma: no cover - defensive: an odd context
            from_env = False
        if from_env:
            names = [envvar] if isinstance(envvar, str) else list(envvar)
            return f"{' or '.join(names)} for {name}"
    return name


def _one_line(text: str) -> str:
    """Collapse Click's multi-line texts (choice lists, hints) into one line without the final full stop."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def usage_error(exc: Exception) -> ParameterError:
    """A Click usage error as the library's ParameterError: ``<what> (<option>)`` on one line."""
    ctx = getattr(exc, "ctx", None)
    param = getattr(exc, "param", None)
    message = str(getattr(exc, "message", "") or exc)
    if isinstance(exc, click_exceptions.MissingParameter):
        kind = "argument" if getattr(param, "param_type_name", "") == "argument" else "option"
        what = f"missing {kind}"
        if param is not None and getattr(param, "type_descriptor", None) is not None:
            choices = getattr(param.type_descriptor, "choices", None)
            if getattr(param.type_descriptor, "is_choice", False) and choices:
                what += "; choose from " + ", ".join(str(getattr(c, "value", c)) for c in choices)
        hint = _option_name(param, None) if param is not None else _one_line(str(exc.param_hint or "?"))
        return ParameterError(f"{what} ({hint})")
    if isinstance(exc, click_exceptions.NoSuchOption):
        suggestion = ""
        match = re.search(r"Did you mean (.*)\?", message)
        if match:
            suggestion = f"; did you mean {match.group(1).replace(chr(39), '')}?"
        elif exc.possibilities:
            suggestion = f"; did you mean {' or '.join(sorted(exc.possibilities))}?"
        return ParameterError(f"no such option{suggestion} ({exc.option_name})")
    if isinstance(exc, click_exceptions.BadParameter):
        given: str | None = _option_name(param, ctx) if param is not None else _one_line(str(exc.param_hint or ""))
        shown = given or None
        what = _lower_first(re.sub(r"^[Vv]alue error, ", "", _one_line(message))) or "invalid value"
        return ParameterError(f"{what} ({shown})" if shown else what)
    if isinstance(exc, click_exceptions.BadOptionUsage):
        return ParameterError(f"{_lower_first(_one_line(message))} ({exc.option_name})")
    return ParameterError(_lower_first(_one_line(message)) or "bad usage (see --help)")


def _refuse_non_finite(kwargs: dict) -> None:
    """NaN or infinity given to a number option (``--wait nan``): a usage error naming the option."""
    bad = [key for key, value in kwargs.items() if isinstance(value, float) and not math.isfinite(value)]
    if not bad:
        return
    try:
        ctx = get_current_context(silent=True)
    except Exception:  # pragma: no cover - defensive
        ctx = None
    params = {p.name: p for p in getattr(getattr(ctx, "command", None), "params", [])}
    key = bad[0]
    hint = _option_name(params[key], ctx) if key in params else f"--{key.replace('_', '-')}"
    raise ParameterError(f"{kwargs[key]!r} is not a finite number ({hint})")


class NNNGroup(TyperGroup):
    """The app's group: a usage error of any command (Click's own included) is one line and exit 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
            raise_if_unreported()  # Typer turned a late signal into a silent 130: say it, with its own code
        except click_exceptions.NoArgsIsHelpError as exc:
            if not standalone_mode:
                raise
            exc.show()
            sys.exit(exc.exit_code)
        except click_exceptions.UsageError as exc:
            if not standalone_mode:
                raise
            try:
                fail(str(usage_error(exc)), 2)
            except typer.Exit as done:
                sys.exit(done.exit_code)
        except click_exceptions.ClickException as exc:
            if not standalone_mode:
                raise
            try:
                fail(_lower_first(_one_line(exc.format_message())), exc.exit_code or 1)
            except typer.Exit as done:
                sys.exit(done.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            raise_if_unreported()  # the signal's own line and code (143 for SIGTERM)
            err_console.print("Interrupted; no output was written.", markup=False, soft_wrap=True)
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def handle_errors(func: Callable) -> Callable:
    """Decorate a command: library exceptions become one line and an exit code (see the module docstring)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        drop_notes()
        try:
            _refuse_non_finite(kwargs)
            result = func(*args, **kwargs)
            release_notes()
            flush_stdout()
            return result
        except (typer.Exit, typer.Abort, SystemExit, click_exceptions.ClickException):
            raise
        except NNNError as exc:
            drop_notes()
            fail(str(exc), 2)
        except BrokenPipeError:
            silence_stdout()
            raise typer.Exit(0) from None
        except KeyboardInterrupt as exc:
            drop_notes()
            what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
            done = getattr(exc, "nnn_published", None) or ", ".join(published_outputs())
            tail = f"{done} was already written in full." if done else "no output was written."
            err_console.print(f"{what}; {tail}", markup=False, highlight=False, soft_wrap=True)
            mark_reported()
            raise typer.Exit(exit_code(exc)) from None
        except MemoryError:
            fail("out of memory; use --memory-budget or smaller inputs", 1)
        except Exception as exc:
            drop_notes()
            if os.environ.get("NNN_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (set NNN_DEBUG=1 for the traceback)", 1)
        finally:
            drop_notes()  # a command that ended otherwise (typer.Exit) leaves nothing for the next one

    return wrapper
