"""The `nnn` Typer application: registers one command module per command, maps signals, runs.

No computation lives in ``nnn_cli.cli``: each command parses its options,
calls one job in :mod:`nnn_cli.jobs` and renders the result.  Library
exceptions (:class:`~nnn_cli.errors.NNNError`) become one line on stderr and
exit code 2 (:mod:`nnn_cli.cli.errors`); progress bars appear only when stderr
is a terminal and ``--quiet`` is not given; ``--json`` prints machine-readable
output on stdout.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from nnn_cli._version import __version__
from nnn_cli.cli.commands import attribute, bias, embed, info, query, search, truth, tune
from nnn_cli.cli.commands import eval as eval_
from nnn_cli.cli.render import silence_stdout


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

app = typer.Typer(
    name="nnn",
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

app.command("bias", epilog=bias.EPILOG)(bias.bias_cmd)
app.command("search", epilog=search.EPILOG)(search.search_cmd)
app.command("eval", epilog=eval_.EPILOG)(eval_.eval_cmd)
app.command("attribute-bias", epilog=attribute.EPILOG)(attribute.attribute_bias_cmd)
app.command("embed", epilog=embed.EPILOG)(embed.embed_cmd)
app.command("info", epilog=info.EPILOG)(info.info_cmd)
app.command("query", epilog=query.EPILOG)(query.query_cmd)
app.command("tune", epilog=tune.EPILOG)(tune.tune_cmd)
app.command("truth-from-pairs", epilog=truth.EPILOG)(truth.truth_cmd)


def version_callback(value: bool) -> None:
    if value:
        print(f"nnn {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Nearest Neighbor Normalization for contrastive retrieval."""


def run() -> None:
    """Run the app (signal handlers are installed by :func:`nnn_cli.cli.main`, before this module loads)."""
    try:
        app()
    except BrokenPipeError:
        silence_stdout()
        sys.exit(0)
