"""The `nnn` Typer application: registers one command module per command, maps signals, runs.

No computation lives in ``nnn_cli.cli``: each command parses its options,
calls one job in :mod:`nnn_cli.jobs` and renders the result.  Library
exceptions (:class:`~nnn_cli.errors.NNNError`) become one line on stderr and
exit code 2 (:mod:`nnn_cli.cli.errors`); progress bars appear only when stderr
is a terminal and ``--quiet`` is not given; ``--json`` prints machine-readable
output on stdout.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Annotated

import typer

from nnn_cli._version import __version__
from nnn_cli.cli.errors import NNNGroup
from nnn_cli.cli.render import silence_stdout

# command: (its module in nnn_cli.cli.commands, its function); imported when the command is registered
COMMANDS: dict[str, tuple[str, str]] = {
    "bias": ("bias", "bias_cmd"),
    "search": ("search", "search_cmd"),
    "eval": ("eval", "eval_cmd"),
    "attribute-bias": ("attribute", "attribute_bias_cmd"),
    "embed": ("embed", "embed_cmd"),
    "info": ("info", "info_cmd"),
    "export": ("export", "export_cmd"),
    "query": ("query", "query_cmd"),
    "tune": ("tune", "tune_cmd"),
    "truth-from-pairs": ("truth", "truth_cmd"),
}


def _hide_flag_type() -> None:
    """Typer's rich help labels flags that take no value `<bool>`; a flag shows no type, as click's plain help does."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_nnn_flags_hidden", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._nnn_flags_hidden = True  # type: ignore[attr-defined]  # a marker: patched once
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]  # the patch itself


_hide_flag_type()


def version_callback(value: bool) -> None:
    if value:
        print(f"nnn {__version__}")
        raise typer.Exit()


def root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Nearest Neighbor Normalization for contrastive retrieval."""


def build_app(names: Iterable[str] = COMMANDS) -> typer.Typer:
    """The Typer application with the commands ``names`` (default all), their modules imported now."""
    app = typer.Typer(
        name="nnn",
        cls=NNNGroup,  # a usage error of any command, Click's own included: one line, exit 2
        help=(
            "Nearest Neighbor Normalization for contrastive retrieval (Chowdhury et al., EMNLP 2024).\n\n"
            "Debias any model's retrieval from embedding files: compute per-item biases from reference "
            "queries (`nnn bias`), search with them (`nnn search`), measure the gain (`nnn eval`).\n\n"
            "Example:\n\n"
            "  nnn bias gallery.h5 --reference ref.h5 --alpha 0.75 --k 16 -o bias.h5\n\n"
            "  nnn eval --queries q.h5 --gallery gallery.h5 --truth truth.npy --bias bias.h5"
        ),
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="markdown",
        pretty_exceptions_enable=False,
    )
    for name in names:
        module_name, function = COMMANDS[name]
        module = importlib.import_module(f"nnn_cli.cli.commands.{module_name}")
        app.command(name, epilog=module.EPILOG)(getattr(module, function))
    app.callback()(root)
    return app


def __getattr__(name: str) -> typer.Typer:
    """``app``: the application with every command, built on first use (tests and ``nnn_cli.cli.app``)."""
    if name == "app":
        app = globals()["app"] = build_app()
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _requested(argv: list[str]) -> Iterable[str]:
    """The command named on the command line alone (a command's options and help need no other module);
    every command otherwise (``nnn --help``, ``--version``, a misspelt name: the list and suggestions)."""
    return [argv[1]] if len(argv) > 1 and argv[1] in COMMANDS else COMMANDS


def run() -> None:
    """Run the app (signal handlers are installed by :func:`nnn_cli.cli.main`, before this module loads)."""
    try:
        build_app(_requested(sys.argv))()
    except BrokenPipeError:
        silence_stdout()
        sys.exit(0)
