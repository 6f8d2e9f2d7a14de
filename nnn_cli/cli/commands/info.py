"""`nnn info`."""

from typing import Annotated

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import handle_errors
from nnn_cli.cli.options import IoTimeoutOpt, JsonOpt, StoreOptionOpt, TableOpt, store_only, store_options
from nnn_cli.cli.render import out_console, print_json, render_info
from nnn_cli.errors import ParameterError

EPILOG = (
    "Examples:\n\n  nnn info bias.h5\n\n  nnn info gallery.h5 bias.h5 params.json\n\n"
    "  nnn info gallery.h5 --fingerprint --json | jq -r .fingerprint\n\n"
    "  nnn info 'postgresql://me@/shop?host=/run/postgresql' --table items"
)


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
    table: TableOpt = None,
    io_timeout: IoTimeoutOpt = None,
    store_option: StoreOptionOpt = None,
) -> None:
    """Show **what a file holds and how it was made**: arrays, parameters, inputs and their fingerprints, history.

    Reads headers and attributes only; never unpickles, never follows HDF5 links out of the file.
    """
    store_only(table is not None, "--table T", {"--store-option": store_option})
    if table is not None:  # a vector store's table: its rows and recorded provenance (credentials masked)
        if len(files) != 1:
            raise ParameterError("--table describes one store: give one URI (FILE...)")
        store_desc = jobs.store_info(
            files[0], table, io_timeout=io_timeout, storage_options=store_options(store_option)
        ).to_json()
        if json_out:
            print_json(store_desc)
        else:
            render_store_info(store_desc)
        return
    descs = [jobs.info(file, fingerprint=fingerprint).summary for file in files]  # all read before any output
    for i, desc in enumerate(descs):
        if json_out:
            print_json(desc)  # one JSON document per file (jq reads the stream)
        else:
            if i:
                out_console.print()
            render_info(desc)


def render_store_info(desc: dict) -> None:
    """A store table's header line, then its recorded provenance as `nnn info` shows a bias file's."""
    out_console.print(
        f"{desc['store']} table {desc['table']!r}: {desc['kind']}, {desc['rows']} rows, "
        f"{desc['rows_without_bias']} without nnn_bias",
        markup=False,
        highlight=False,
    )
    meta = desc.get("nnn")
    if not meta:
        out_console.print("no nnn provenance recorded (not written by nnn export / nnn bias --in-place)", markup=False)
        return
    render_info({"path": "", "kind": "", "format": "", "bytes": 0, "datasets": {}, "attrs": meta, "_store": True})
