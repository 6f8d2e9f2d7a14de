"""`nnn info`."""

from __future__ import annotations

from typing import Annotated

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import handle_errors
from nnn_cli.cli.options import JsonOpt
from nnn_cli.cli.render import out_console, print_json, render_info

EPILOG = "Examples:\n\n  nnn info bias.h5\n\n  nnn info gallery.h5 bias.h5 params.json\n\n  nnn info gallery.h5 --fingerprint --json | jq -r .fingerprint"


@handle_errors
def info_cmd(
    files: Annotated[
        list[str],
        typer.Argument(
            metavar="FILE...",
            help="One or more nnn files: embeddings, bias, results (.h5/.npz/.jsonl), params .json.",
        ),
    ],
    fingerprint: Annotated[
        bool,
        typer.Option(
            "--fingerprint", help="Also compute an embedding file's content fingerprint (reads the whole file)."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show **what a file holds and how it was made**: arrays, parameters, inputs and their fingerprints, history.

    Reads headers and attributes only; never unpickles, never follows HDF5 links out of the file.
    """
    descs = [jobs.info(file, fingerprint=fingerprint).summary for file in files]  # all read before any output
    for i, desc in enumerate(descs):
        if json_out:
            print_json(desc)  # one JSON document per file (jq reads the stream)
        else:
            if i:
                out_console.print()
            render_info(desc)
