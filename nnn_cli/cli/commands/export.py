"""`nnn export`."""

from typing import Annotated, Optional

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import handle_errors
from nnn_cli.cli.options import (
    ForceOpt,
    GalleryIdsOpt,
    IdsColumnOpt,
    IoTimeoutOpt,
    JsonOpt,
    Metric,
    MetricOpt,
    QuietOpt,
    StoreOptionOpt,
    WaitOpt,
    store_options,
)
from nnn_cli.cli.render import info, note_printer, print_json

EPILOG = (
    "Examples:\n\n"
    "  nnn export gallery.h5 --bias bias.h5 --to 'postgresql://me@/shop?host=/run/postgresql' --table items --index hnsw\n\n"
    "  nnn export gallery.h5 --bias bias.h5 --to lancedb:./vectors --table items\n\n"
    "  nnn export gallery.h5 --bias bias.h5 --to qdrant:./qdrant_data --table items --replace"
)


@handle_errors
def export_cmd(
    gallery: Annotated[str, typer.Argument(help="Gallery embeddings (.h5, FILE.h5:DATASET, .npy, a shard folder).")],
    bias: Annotated[str, typer.Option("--bias", "-b", help="The gallery's bias file from `nnn bias`.")],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The store: postgresql://USER@HOST/DB (?host=/socket/dir), lancedb:PATH_OR_URL, qdrant:PATH or "
            "qdrant:http://HOST:6333. Passwords: in the URI, PGPASSWORD or ~/.pgpass; never shown.",
        ),
    ],
    table: Annotated[str, typer.Option("--table", help="Table (collection) to write.")] = "nnn_items",
    index: Annotated[
        str, typer.Option("--index", help="none, hnsw or ivf: the store's ANN index on nnn_vector.")
    ] = "none",
    store_metric: Annotated[
        str,
        typer.Option(
            "--store-metric",
            help="ip (inner product, native) or l2 (the MIPS-to-L2 reduction: one more dimension). "
            "cosine is refused: it renormalises [r, b].",
        ),
    ] = "ip",
    replace: Annotated[bool, typer.Option("--replace", help="Rewrite an existing table (atomically).")] = False,
    append: Annotated[bool, typer.Option("--append", help="Add the rows to a table made by nnn export.")] = False,
    with_columns: Annotated[
        Optional[str],
        typer.Option(
            "--with-columns", help="A .jsonl or .parquet file, one record per gallery row: carried as columns."
        ),
    ] = None,
    metric: MetricOpt = Metric.cosine,
    ids: GalleryIdsOpt = None,
    ids_column: IdsColumnOpt = None,
    force: ForceOpt = False,
    io_timeout: IoTimeoutOpt = None,
    store_option: StoreOptionOpt = None,
    wait: WaitOpt = 10.0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a gallery and its biases into a **vector store** (PostgreSQL + pgvector, LanceDB, Qdrant).

    Each row gets its id, the plain vector, `nnn_bias` and `nnn_vector` = [r, b]: the store's own
    inner-product search with [q, -1] (`nnn search --store`) then ranks by the debiased score.
    A new table appears whole or not at all; an existing one is refused without --replace.
    """
    note = note_printer(quiet)
    result = jobs.export(
        gallery,
        bias,
        to,
        table=table,
        index=index,
        store_metric=store_metric,
        metric=metric.value,
        replace=replace,
        append=append,
        ids=ids,
        ids_column=ids_column,
        with_columns=with_columns,
        force=force,
        io_timeout=io_timeout,
        storage_options=store_options(store_option),
        wait=wait,
        on_note=note,
    )
    if json_out:
        print_json(result.to_json())
    info(result.message, quiet)
