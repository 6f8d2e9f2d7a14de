"""`nnn search`."""

import sys
from typing import Annotated, Optional, TextIO, cast

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import fail, handle_errors
from nnn_cli.cli.options import (
    DEVICE_DEFAULT,
    AddressOpt,
    BlockOpt,
    BlockRowsOpt,
    DeviceOpt,
    EfSearchOpt,
    EngineOpt,
    ExactOpt,
    ForceOpt,
    GalleryIdsColumnOpt,
    GalleryIdsOpt,
    GpusPerTaskOpt,
    IdsColumnOpt,
    IndexOpt,
    IoTimeoutOpt,
    LoadIndexOpt,
    MaxRetriesOpt,
    Metric,
    MetricOpt,
    NlistOpt,
    NprobeOpt,
    OutFormat,
    PartitionRowsOpt,
    QueriesIdsColumnOpt,
    QueriesInputOpt,
    QueryIdsOpt,
    QuietOpt,
    RecallOpt,
    SaveIndexOpt,
    StorageOptionOpt,
    StoreOpt,
    StoreOptionOpt,
    TableOpt,
    ThreadsOpt,
    block_size_note,
    engine_options,
    ids_columns,
    index_options,
    one_input,
    store_only,
    store_options,
)
from nnn_cli.cli.render import StdoutSink, info, note_printer, progress_bar

EPILOG = (
    "Examples:\n\n"
    "  nnn search queries.h5 --gallery gallery.h5 --bias bias.h5 --top-k 10 -o results.h5\n\n"
    "  nnn search queries.h5 --gallery gallery.h5 --bias bias.h5 --top-k 5 -o - | head\n\n"
    "  nnn search queries.h5 --gallery gallery.h5 --bias bias.h5 -o results.jsonl\n\n"
    "  nnn search queries.h5 --gallery gallery.h5 --bias bias.h5 --index hnsw --recall 0.95 "
    "--save-index gallery.faiss -o results.h5"
)


@handle_errors
def search_cmd(
    gallery: Annotated[Optional[str], typer.Option("--gallery", "-g", help="Gallery embeddings (N, d).")] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="Results file (.h5/.npz, .jsonl), or - for JSON lines on stdout.")
    ] = "",
    queries_arg: Annotated[
        Optional[str],
        typer.Argument(
            metavar="QUERIES",
            help="Query embeddings (.h5, FILE.h5:DATASET, .npy, a shard folder, "
            "or - for .npy/HDF5 bytes on stdin), shape (Q, d). Shorthand of --queries.",
        ),
    ] = None,
    queries_opt: QueriesInputOpt = None,
    bias: Annotated[
        Optional[str], typer.Option("--bias", "-b", help="Bias file from `nnn bias`; omit for plain search.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-n", min=1, help="Results per query.")] = 10,
    out_format: Annotated[
        Optional[OutFormat], typer.Option("--format", help="h5 or jsonl (default: from the file name; jsonl for -).")
    ] = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = None,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    index: IndexOpt = "flat",
    nlist: NlistOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    recall: RecallOpt = None,
    overfetch: Annotated[
        Optional[int],
        typer.Option(
            "--overfetch",
            min=1,
            help="With an approximate index: fetch top-k x this many candidates and re-rank "
            "them by exact debiased score (default 1; 4 for quantized indexes).",
        ),
    ] = None,
    save_index: SaveIndexOpt = None,
    load_index: LoadIndexOpt = None,
    device: DeviceOpt = DEVICE_DEFAULT,
    query_ids: QueryIdsOpt = None,
    gallery_ids: GalleryIdsOpt = None,
    ids_column: IdsColumnOpt = None,
    queries_ids_column: QueriesIdsColumnOpt = None,
    gallery_ids_column: GalleryIdsColumnOpt = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    gpus_per_task: GpusPerTaskOpt = 0.0,
    block_rows: BlockRowsOpt = None,
    partition_rows: PartitionRowsOpt = None,
    max_retries: MaxRetriesOpt = 3,
    storage_option: StorageOptionOpt = None,
    io_timeout: IoTimeoutOpt = None,
    store: StoreOpt = None,
    table: TableOpt = None,
    store_option: StoreOptionOpt = None,
    exact: ExactOpt = False,
) -> None:
    """Top-N gallery items per query by the **debiased score s(q, r) - b(r)**.

    Uses the augmented-vector trick (r' = [r, b], q' = [q, -1]) in an
    inner-product index: debiased search costs what plain search costs.
    Ties are broken by the lower gallery index.
    """
    queries = one_input(queries_arg, queries_opt, "--queries")
    note = note_printer(quiet)
    if block_size_note(block_size):
        note(block_size_note(block_size))
    if not output:
        fail("missing option (--output): give -o RESULTS (.h5/.npz/.jsonl) or -o - for JSON lines")
    store_only(
        store is not None,
        "--store URI",
        {"--table": table, "--store-option": store_option, "--exact": exact or None},
    )
    if store is not None:
        if gallery is not None or bias is not None:
            fail("--store searches the store's table: drop --gallery and --bias")
        if nlist is not None or nprobe is not None or recall is not None:
            fail("--nlist/--nprobe/--recall tune nnn's own index: with --store use --ef-search N or --exact")
        store_result = jobs.search_store(
            queries,
            store,
            output,
            table=table or "",
            top_k=top_k,
            metric=metric.value,
            force=force,
            stream=cast(TextIO, StdoutSink(sys.stdout)),
            query_ids=query_ids,
            io_timeout=io_timeout,
            storage_options=store_options(store_option),
            ef_search=ef_search,
            exact=exact,
            on_note=note,
        )
        info(store_result.summary["message"], quiet)
        return
    if gallery is None:
        fail("missing option (--gallery): give --gallery G, or --store URI --table T")
        return
    with progress_bar("search", quiet) as progress:
        result = jobs.search(
            queries,
            gallery,
            output,
            bias=bias,
            top_k=top_k,
            fmt=out_format.value if out_format else None,
            metric=metric.value,
            threads=threads,
            force=force,
            overfetch=overfetch,
            device=device.value,
            engine=engine_options(
                engine,
                address,
                False,
                gpus_per_task,
                block_rows,
                partition_rows,
                max_retries,
                storage_option,
                io_timeout,
            ),
            index=index_options(index, nlist, nprobe, ef_search, recall, save_index, load_index),
            stream=cast(TextIO, StdoutSink(sys.stdout)),
            query_ids=query_ids,
            gallery_ids=gallery_ids,
            ids_columns=ids_columns(ids_column, gallery=gallery_ids_column, queries=queries_ids_column),
            progress=progress,
            on_note=note,
        )
    if "message" in result.summary:
        info(result.summary["message"], quiet)
