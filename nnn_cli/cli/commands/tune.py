"""`nnn tune`."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from nnn_cli import jobs
from nnn_cli.cli.errors import handle_errors
from nnn_cli.cli.options import (
    BlockOpt,
    GalleryOpt,
    JsonOpt,
    Metric,
    MetricOpt,
    Objective,
    QuietOpt,
    ThreadsOpt,
    block_size_note,
)
from nnn_cli.cli.render import info, note_printer, print_json, progress_bar, render_method_sweep, render_tune_grid
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.eval import tunable_methods
from nnn_cli.jobs.tune import PAPER_ALPHAS_TEXT, PAPER_KS_TEXT

EPILOG = (
    "Examples:\n\n"
    "  nnn tune --queries q.h5 --gallery g.h5 --truth truth.npy --reference ref.h5 -o params.json\n\n"
    "  nnn tune -Q q.h5 -g g.h5 -t truth.npy -r ref.h5 -o params.json --alphas 0.5,0.75,1 --ks 8,16,32 --objective R@5\n\n"
    "  nnn tune --gallery g.h5 --reference ref.h5 -o params.json --unsupervised\n\n"
    "  nnn bias g.h5 --reference ref.h5 --params params.json -o bias.h5"
)


@handle_errors
def tune_cmd(
    gallery: GalleryOpt,
    reference: Annotated[
        str, typer.Option("--reference", "-r", help="Reference query embeddings (M, d): the biases come from these.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="params.json to write (alpha, k, score, the whole grid).")
    ],
    queries: Annotated[
        Optional[str], typer.Option("--queries", "-Q", help="Held-out query embeddings (Q, d) with known answers.")
    ] = None,
    truth: Annotated[
        Optional[str],
        typer.Option(
            "--truth",
            "-t",
            help="Ground truth of --queries: .npy (Q,) or (P, 2), .h5 'truth', or .csv/.tsv of ids. Omit to tune unsupervised.",
        ),
    ] = None,
    alphas: Annotated[
        str,
        typer.Option(
            "--alphas", envvar="NNN_ALPHAS", help="Comma list of alphas (default: the paper's 0.25..1.5 by 0.125)."
        ),
    ] = PAPER_ALPHAS_TEXT,
    ks: Annotated[
        str,
        typer.Option(
            "--ks",
            envvar="NNN_KS",
            help="Comma list of k (default: the paper's 1..512, powers of 2); k above the reference size is skipped.",
        ),
    ] = PAPER_KS_TEXT,
    objective: Annotated[
        Objective, typer.Option("--objective", help="Recall to maximise (supervised mode).")
    ] = Objective.r1,
    unsupervised: Annotated[
        bool,
        typer.Option(
            "--unsupervised",
            help="Choose from the reference queries alone (automatic when --truth is omitted); with --queries/--truth, recall is reported but not used.",
        ),
    ] = False,
    holdout: Annotated[
        float,
        typer.Option("--holdout", help="Unsupervised: share of reference queries held out for the retrieval test."),
    ] = 0.2,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            help="Unsupervised: cells within this of the best entropy count as tied; the one closest to plain retrieval wins.",
        ),
    ] = 0.001,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = None,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="nnn (default), or a comparison method to tune instead (supervised only): "
            + ", ".join(tunable_methods()[1:])
            + ".",
        ),
    ] = "nnn",
    method_grid: Annotated[
        Optional[str],
        typer.Option(
            "--method-grid",
            help="Grid of a comparison method, e.g. 'db_beta1=0,1,5;db_beta2=25,50,100' (default: a sweep spanning the paper's Appendix B2 ranges).",
        ),
    ] = None,
    gallery_bank: Annotated[
        Optional[str],
        typer.Option("--gallery-bank", help="Gallery-side reference bank for dn/dbnorm (default: the gallery itself)."),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Write the alpha x k heatmap of the sweep to this PNG (needs matplotlib)."),
    ] = None,
    db_dense: Annotated[
        str,
        typer.Option(
            "--db-dense",
            help="DBNorm sweep (App. B2): coarse 0 + 20 log values over [0.001, 400] per beta, then a dense 21x21 around the best (around), the paper's fixed ranges beta1 in [0.001, 15], beta2 in [25, 200] (paper), or none.",
        ),
    ] = "around",
    activation_k: Annotated[
        int, typer.Option("--activation-k", min=1, help="QB-Norm/DualDIS activation set size k.")
    ] = 1,
    reference_fraction: Annotated[
        float,
        typer.Option(
            "--reference-fraction",
            help="Use a seeded random share of the reference queries (the paper's reference-size ablation, Tables A12-A15).",
        ),
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", "--reference-seed", help="Seed of --reference-fraction.")] = 0,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Refuse (exit 2) when tuning queries also appear in the reference set (a leak: the same id, or a "
            "near-duplicate row, cosine >= 0.999); default: warn.",
        ),
    ] = False,
) -> None:
    """Choose **alpha and k** by sweeping a grid; writes params.json for `nnn bias/eval --params`.

    **Supervised** (--queries and --truth): every (alpha, k) cell's exact
    Recall@1/5/10 on your queries; the best --objective wins, ties going to the
    smaller alpha, then the smaller k.  Fast by construction: one top-(max k)
    pass of the gallery against the reference gives every k's bias at once, the
    query x gallery scores are computed once, and each cell costs only a
    comparison over the few items that can change rank in some cell.

    **Unsupervised** (no --truth, or --unsupervised): a --holdout share of the
    reference queries (every 5th by default) is held out; biases come from the
    rest; each cell retrieves the rank-1 gallery item of every held-out query.
    Score: the normalised entropy of the rank-1 retrieval counts (1 = perfectly
    even).  Hubs lower it, and so does over-correction, so it peaks in between.
    Among the cells within --tolerance of the best entropy, the one keeping most
    held-out queries' plain rank-1 item wins (least intervention).
    """
    note = note_printer(quiet)
    block_note = block_size_note(block_size)
    if block_note:
        note(block_note)
    with progress_bar("tune" if method == "nnn" else f"tune {method}", quiet) as progress:
        result = jobs.tune(
            gallery,
            reference,
            output,
            queries=queries,
            truth=truth,
            alphas=parse_numbers(alphas, "alpha", float),
            ks=parse_numbers(ks, "k", int),
            objective=objective.value,
            unsupervised=unsupervised,
            holdout=holdout,
            tolerance=tolerance,
            metric=metric.value,
            threads=threads,
            method=method,
            method_grid=parse_method_grid(method_grid),
            gallery_bank=gallery_bank,
            plot=plot,
            db_dense=db_dense,
            activation_k=activation_k,
            reference_fraction=reference_fraction,
            seed=seed,
            strict=strict,
            progress=progress,
            on_note=None,
        )
    doc = result.to_json()
    if json_out:
        print_json(doc)
    elif quiet:
        pass
    elif result.grid is not None:
        render_tune_grid(result.grid)
    else:
        render_method_sweep(result.document["method"], doc)
    for line in result.notes:
        note(line)
    info(result.message, quiet)


def parse_numbers(text: str, kind: str, cast: type) -> list:
    """``--alphas``/``--ks``: a comma list of numbers (alpha) or integers (k)."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ParameterError(f"the {kind} list {text!r} is empty; give comma-separated values")
    out = []
    for item in items:
        try:
            out.append(cast(item))
        except ValueError:
            expected = "a number" if cast is float else "an integer"
            raise ParameterError(f"bad {kind} value {item!r} in {text!r}: expected {expected}") from None
    return out


def parse_method_grid(text: Optional[str]) -> Optional[dict[str, list[float]]]:
    """``"db_beta1=0,1,5;db_beta2=25,50"`` -> ``{"db_beta1": [0, 1, 5], "db_beta2": [25, 50]}``."""
    if not text:
        return None
    out: dict[str, list[float]] = {}
    for part in str(text).split(";"):
        if not part.strip():
            continue
        name, sep, values = part.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"bad --method-grid entry {part.strip()!r}: use NAME=V1,V2;NAME2=...")
        try:
            out[name.strip().replace("-", "_")] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ParameterError(f"bad --method-grid values for {name.strip()}: {values!r}") from None
    return out
