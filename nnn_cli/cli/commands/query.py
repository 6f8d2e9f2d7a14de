"""`nnn query`."""

from typing import Annotated, Optional

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import fail, handle_errors
from nnn_cli.cli.options import (
    DEVICE_DEFAULT,
    BiasFileOpt,
    DeviceOpt,
    ExactOpt,
    ForceOpt,
    IoTimeoutOpt,
    JsonOpt,
    Metric,
    MetricOpt,
    StoreEfSearchOpt,
    StoreOpt,
    StoreOptionOpt,
    TableOpt,
    ThreadsOpt,
    store_only,
    store_options,
)
from nnn_cli.cli.render import note_printer, print_json_lines, render_query
from nnn_cli.errors import ParameterError

EPILOG = (
    "Examples:\n\n"
    '  nnn query "a text editor for the terminal" --gallery sample_data/gallery.h5 --bias bias.h5\n\n'
    '  nnn query "image viewer" "mail client" -g gallery.h5 -b bias.h5 --top-k 3 --json\n\n'
    '  nnn query "image viewer" --store lancedb:./vectors --table items'
)


@handle_errors
def query_cmd(
    texts: Annotated[list[str], typer.Argument(metavar="TEXT...", help="One or more query texts.")],
    gallery: Annotated[Optional[str], typer.Option("--gallery", "-g", help="Gallery embeddings (N, d).")] = None,
    bias: BiasFileOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-n", min=1, help="Results per query.")] = 10,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", "-m", help="Model to embed with (default: the one recorded in the gallery file by `nnn embed`)."
        ),
    ] = None,
    device: DeviceOpt = DEVICE_DEFAULT,
    metric: MetricOpt = Metric.cosine,
    threads: ThreadsOpt = 0,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    table: TableOpt = None,
    io_timeout: IoTimeoutOpt = None,
    store_option: StoreOptionOpt = None,
    ef_search: StoreEfSearchOpt = None,
    exact: ExactOpt = False,
    backend: Annotated[
        Optional[str],
        typer.Option(
            "--backend",
            help="torch, onnx or openvino (default: as the gallery was embedded; a torch fp32 gallery is "
            "queried through the cached fp32 ONNX export when onnxruntime is installed).",
        ),
    ] = None,
    quantize: Annotated[
        Optional[str], typer.Option("--quantize", help="none or int8 (default: as the gallery was embedded).")
    ] = None,
) -> None:
    """Embed TEXT with the model recorded in the gallery and **show the debiased ranking**, without writing a file."""
    for i, text in enumerate(texts, 1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
            raise ParameterError(f"query text {i} is not valid UTF-8 text (TEXT)") from None
        if not text.strip():
            raise ParameterError(f"query text {i} is empty (TEXT)")
    store_only(
        store is not None,
        "--store URI",
        {"--table": table, "--store-option": store_option, "--ef-search": ef_search, "--exact": exact or None},
    )
    if store is not None:
        if gallery is not None or bias is not None:
            fail("--store ranks through the store's table: drop --gallery and --bias")
            return
        result = jobs.query_store(
            texts,
            store,
            table=table or "",
            top_k=top_k,
            model=model,
            metric=metric.value,
            device=device.value,
            force=force,
            io_timeout=io_timeout,
            storage_options=store_options(store_option),
            ef_search=ef_search,
            exact=exact,
        ).summary
        if json_out:
            print_json_lines(result["results"])
        else:
            render_query(result)
        return
    if gallery is None:
        fail("missing option (--gallery): give --gallery G, or --store URI --table T")
        return
    result = jobs.query(
        texts,
        gallery,
        bias=bias,
        top_k=top_k,
        model=model,
        metric=metric.value,
        device=device.value,
        force=force,
        threads=threads,
        backend=backend,
        quantize=quantize,
        on_note=note_printer(False),
    ).summary
    if json_out:
        print_json_lines(result["results"])
    else:
        render_query(result)
