"""`nnn bias`."""

from typing import Annotated, Optional

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import fail, handle_errors
from nnn_cli.cli.options import (
    DEVICE_DEFAULT,
    AddressOpt,
    AlphaOpt,
    BlockOpt,
    BlockRowsOpt,
    ColumnOpt,
    DeviceOpt,
    EfSearchOpt,
    EngineOpt,
    GalleryIdsColumnOpt,
    GalleryIdsOpt,
    GalleryInputOpt,
    GpusPerTaskOpt,
    IdColumnOpt,
    IdsColumnOpt,
    IndexOpt,
    IoTimeoutOpt,
    JsonOpt,
    KOpt,
    LoadIndexOpt,
    MaxRetriesOpt,
    MemoryBudgetOpt,
    Metric,
    MetricOpt,
    NlistOpt,
    NprobeOpt,
    ParamsOpt,
    PartitionRowsOpt,
    QuietOpt,
    RecallOpt,
    ReferenceIdsColumnOpt,
    ResumeOpt,
    SaveIndexOpt,
    StorageOptionOpt,
    StoreOptionOpt,
    TableOpt,
    ThreadsOpt,
    WaitOpt,
    block_size_note,
    engine_options,
    ids_columns,
    index_options,
    one_input,
    store_only,
    store_options,
)
from nnn_cli.cli.render import info, note_printer, print_json, progress_bar

EPILOG = (
    "Examples:\n\n"
    "  nnn bias gallery.h5 --reference ref.h5 --alpha 0.75 --k 16 -o bias.h5\n\n"
    "  nnn bias gallery.npy --reference ref.npy --params params.json -o bias.npy --metric ip\n\n"
    "  nnn bias new_items.h5 --reference ref.h5 --append-to bias.h5\n\n"
    "  nnn bias gallery.h5 --update bias.h5 --reference-add todays_queries.h5\n\n"
    "  nnn bias gallery.h5 --reference ref_shards/ --index auto --recall 0.95 --save-index ref.faiss -o bias.h5\n\n"
    "  nnn bias gallery.h5 --reference big_ref.h5 --memory-budget 1GB -o bias.h5\n\n"
    "  nnn bias 'postgresql://me@/shop?host=/run/postgresql' --table items --column embedding -r ref.h5 "
    "--params p.json --in-place [--only-new]"
)


@handle_errors
def bias_cmd(
    gallery_arg: Annotated[
        Optional[str],
        typer.Argument(
            metavar="GALLERY",
            help="Gallery embeddings (.h5, FILE.h5:DATASET, .npy or a folder of "
            ".npy shards), shape (N, d); with --append-to: only the NEW items. Shorthand of --gallery.",
        ),
    ] = None,
    gallery_opt: GalleryInputOpt = None,
    reference: Annotated[
        Optional[str], typer.Option("--reference", "-r", help="Reference query embeddings (M, d).")
    ] = None,
    output: Annotated[
        Optional[str],
        typer.Option(
            "--output",
            "-o",
            help="Bias file to write (.h5 or .npy), or a run folder (a folder or URL such as s3://bucket/run: "
            "manifest.json + blocks/); with --append-to/--update defaults to that file.",
        ),
    ] = None,
    alpha: AlphaOpt = None,
    k: KOpt = None,
    params: ParamsOpt = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = None,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    append_to: Annotated[
        Optional[str],
        typer.Option(
            "--append-to",
            help="Existing bias .h5 (or, with --engine ray, its run folder/URL): compute only the NEW "
            "gallery items given as GALLERY and append them (checks --reference/alpha/k/metric "
            "match).",
        ),
    ] = None,
    update: Annotated[
        Optional[str],
        typer.Option(
            "--update",
            help="Existing bias .h5 (or, with --engine ray, its run folder/URL) for GALLERY: merge in "
            "--reference-add queries (cost N x M_new).",
        ),
    ] = None,
    reference_add: Annotated[
        Optional[str],
        typer.Option(
            "--reference-add",
            help="New reference queries to fold into --update's bias file (or, with --in-place, into the store's "
            "recorded reference: every row's stored top-k merged with the new queries).",
        ),
    ] = None,
    store_topk: Annotated[
        bool,
        typer.Option(
            "--store-topk/--no-store-topk",
            help="Store each item's top-k reference scores (dataset 'topk', N x k "
            "float32) so `--update` can add reference queries later.",
        ),
    ] = True,
    index: IndexOpt = "flat",
    nlist: NlistOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    recall: RecallOpt = None,
    save_index: SaveIndexOpt = None,
    load_index: LoadIndexOpt = None,
    memory_budget: MemoryBudgetOpt = None,
    device: DeviceOpt = DEVICE_DEFAULT,
    wait: WaitOpt = 10.0,
    gallery_ids: GalleryIdsOpt = None,
    ids_column: IdsColumnOpt = None,
    gallery_ids_column: GalleryIdsColumnOpt = None,
    reference_ids_column: ReferenceIdsColumnOpt = None,
    engine: EngineOpt = "local",
    address: AddressOpt = None,
    resume: ResumeOpt = False,
    gpus_per_task: GpusPerTaskOpt = 0.0,
    block_rows: BlockRowsOpt = None,
    partition_rows: PartitionRowsOpt = None,
    max_retries: MaxRetriesOpt = 3,
    storage_option: StorageOptionOpt = None,
    io_timeout: IoTimeoutOpt = None,
    queries: Annotated[
        Optional[str],
        typer.Option(
            "--queries",
            "-Q",
            help="Queries to check for leaks into the reference (same id, or a near-duplicate row, cosine >= 0.999).",
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="With --queries: refuse (exit 2) on a leak.")] = False,
    leak_sketch: Annotated[
        bool,
        typer.Option(
            "--leak-sketch/--no-leak-sketch",
            help="A new HDF5 bias file records a sketch of its reference (512-bit SimHash codes, id hashes) so "
            "`nnn eval --bias` can check test queries for leaks without the reference. --no-leak-sketch saves its "
            "GEMM (about a tenth of an exact bias's work); that check then needs the reference.",
        ),
    ] = True,
    reference_fraction: Annotated[
        Optional[float],
        typer.Option(
            "--reference-fraction",
            help="Use a seeded random share of the reference (Tables A12-A15); params tuned on a share apply it.",
        ),
    ] = None,
    reference_seed: Annotated[
        Optional[int], typer.Option("--reference-seed", "--seed", help="Seed of --reference-fraction (default 0).")
    ] = None,
    in_place: Annotated[
        bool,
        typer.Option(
            "--in-place",
            help="GALLERY is a vector store (postgresql://..., lancedb:..., qdrant:...): read --table/--column and "
            "write nnn_bias and nnn_vector = [r, b] beside the user's columns (never touching them).",
        ),
    ] = False,
    only_new: Annotated[
        bool,
        typer.Option(
            "--only-new",
            help="With --in-place: only rows whose nnn_bias is NULL (added since the last run), with the recorded parameters.",
        ),
    ] = False,
    table: TableOpt = None,
    column: ColumnOpt = "embedding",
    id_column: IdColumnOpt = None,
    store_option: StoreOptionOpt = None,
) -> None:
    """Compute each gallery item's bias: **alpha x mean of its k highest reference-query scores**.

    Exact by default (GEMM tiles + top-k selection); `--index` uses an
    approximate faiss index (`auto` says which it chose), `--memory-budget`
    streams inputs larger than memory.  The bias is what `nnn search` and
    `nnn eval` subtract from that item's scores.
    Incremental, still exact: `--append-to BIAS.h5` adds new gallery items,
    `--update BIAS.h5 --reference-add NEW.h5` adds new reference queries.
    """
    gallery = one_input(gallery_arg, gallery_opt, "--gallery")
    note = note_printer(quiet)
    if block_size_note(block_size):
        note(block_size_note(block_size))
    store_only(
        in_place,
        "--in-place",
        {
            "--table": table,
            "--column": None if column == "embedding" else column,
            "--id-column": id_column,
            "--store-option": store_option,
        },
    )
    if only_new and not in_place:
        fail("--only-new needs --in-place")
        return
    place = jobs.in_place_target(table, column, id_column, only_new=only_new,
                                 store_options=store_options(store_option)) if in_place else None  # fmt: skip
    with progress_bar("bias", quiet) as progress:
        result = jobs.bias(
            gallery,
            reference,
            output,
            alpha=alpha,
            k=k,
            params=params,
            metric=metric.value,
            threads=threads,
            store_topk=store_topk,
            append_to=append_to,
            update=update,
            reference_add=reference_add,
            engine=engine_options(
                engine,
                address,
                resume,
                gpus_per_task,
                block_rows,
                partition_rows,
                max_retries,
                storage_option,
                io_timeout,
            ),
            index=index_options(index, nlist, nprobe, ef_search, recall, save_index, load_index),
            memory_budget=memory_budget,
            device=device.value,
            wait=wait,
            gallery_ids=gallery_ids,
            ids_columns=ids_columns(ids_column, gallery=gallery_ids_column, reference=reference_ids_column),
            queries=queries,
            strict=strict,
            leak_sketch=leak_sketch,
            reference_fraction=reference_fraction,
            reference_seed=reference_seed,
            in_place=place,
            progress=progress,
            on_note=note,
        )
    if json_out:
        print_json({key: v for key, v in result.summary.items() if key != "message"})
    info(result.summary["message"], quiet)
