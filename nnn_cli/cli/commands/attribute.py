"""`nnn attribute-bias`."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import handle_errors
from nnn_cli.cli.options import (
    AlphaOpt,
    BiasFileOpt,
    BiasReferenceOpt,
    BlockOpt,
    ForceOpt,
    GalleryOpt,
    JsonOpt,
    KOpt,
    Metric,
    MetricOpt,
    ParamsOpt,
    QuietOpt,
    ThreadsOpt,
    block_size_note,
)
from nnn_cli.cli.render import note_printer, print_json, progress_bar, render_attribute_table
from nnn_cli.errors import ParameterError

EPILOG = (
    "Examples:\n\n"
    "  nnn attribute-bias --queries neutral.h5 --gallery images.h5 --labels gender.csv "
    "--group-a man --group-b woman --bias bias.h5\n\n"
    "  nnn attribute-bias --queries q.npy --gallery g.npy --labels labels.npy --reference ref.npy "
    "--alpha 0.75 --k 16 --truth truth.npy --n 6,10 --json"
)


@handle_errors
def attribute_bias_cmd(
    queries: Annotated[str, typer.Option("--queries", "-Q", help="Attribute-neutral query embeddings (Q, d).")],
    gallery: GalleryOpt,
    labels: Annotated[
        Path,
        typer.Option(
            "--labels",
            "-l",
            help=".npy of 1 (a) / 0 (b) / -1 (neither) per gallery row, or .csv/.tsv with header id,label.",
        ),
    ],
    bias: BiasFileOpt = None,
    reference: BiasReferenceOpt = None,
    alpha: AlphaOpt = None,
    k: KOpt = None,
    params: ParamsOpt = None,
    truth: Annotated[
        Optional[str], typer.Option("--truth", "-t", help="Ground truth, to report precision@n too.")
    ] = None,
    n_values: Annotated[
        str, typer.Option("--n", help="Comma list of list lengths n for the bias (the paper: 6, 10).")
    ] = "6,10",
    precision_n: Annotated[
        str, typer.Option("--precision-n", help="Comma list of n for precision@n with --truth (the paper: 1, 5).")
    ] = "1,5",
    query_groups: Annotated[
        Optional[Path],
        typer.Option(
            "--query-groups",
            help="csv/tsv 'id,group' grouping the queries (e.g. by occupation): the bias is then a mean over groups, with per-group values, as the paper.",
        ),
    ] = None,
    group_a: Annotated[
        Optional[str],
        typer.Option(
            "--group-a", help="Label value of group a (required with csv labels: the sign of the bias depends on it)."
        ),
    ] = None,
    group_b: Annotated[Optional[str], typer.Option("--group-b", help="Label value of group b (csv labels).")] = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = None,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot",
            help="PNG of each query group's bias before and after NNN (the paper's Fig. 3; needs --query-groups and matplotlib).",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse (exit 2) when the queries are in the reference set (same id or a near-duplicate row); default: warn.",
        ),
    ] = False,
) -> None:
    """Attribute bias **(#a - #b) / n** of each query's top n, averaged, before and after NNN.

    As the paper's Section 3.3 (gender bias on VisoGender): 0 is balanced,
    +1 all group a, -1 all group b.  With --truth, precision@n (share of the
    top n that are correct items) is reported beside it.
    """
    note = note_printer(quiet or json_out)
    block_note = block_size_note(block_size)
    if block_note:
        note(block_note)
    with progress_bar("attribute bias", quiet) as progress:
        result = jobs.attribute_bias(
            queries,
            gallery,
            labels,
            bias=bias,
            reference=reference,
            alpha=alpha,
            k=k,
            params=params,
            truth=truth,
            ns=parse_ints(n_values, "--n"),
            precision_ns=parse_ints(precision_n, "--precision-n"),
            query_groups=query_groups,
            group_a=group_a,
            group_b=group_b,
            metric=metric.value,
            threads=threads,
            force=force,
            plot=plot,
            strict=strict,
            progress=progress,
            on_note=note,
        ).summary
    if json_out:
        print_json(result)
    else:
        render_attribute_table(result)


def parse_ints(text: str, option: str) -> list[int]:
    """A comma list of integers (``--n``, ``--precision-n``)."""
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ParameterError(f"{option} must be a comma list of integers, got {text!r}") from None
