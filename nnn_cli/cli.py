"""The `nnn` command line: parse, validate, call the library, render.

No computation lives here.  Library exceptions (:class:`NNNError`) become one
line on stderr and exit code 2; anything else is exit code 1 (set
``NNN_DEBUG=1`` for the traceback).  Progress bars appear only when stderr is
a terminal and ``--quiet`` is not given; ``--json`` prints machine-readable
output on stdout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import NNNError, ParameterError

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

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


class Metric(str, Enum):
    cosine = "cosine"
    ip = "ip"


class OutFormat(str, Enum):
    h5 = "h5"
    jsonl = "jsonl"


# ---------------------------------------------------------------------------
# Shared options
# ---------------------------------------------------------------------------
MetricOpt = Annotated[
    Metric,
    typer.Option("--metric", envvar="NNN_METRIC",
                 help="cosine: L2-normalise rows on load; ip: raw inner products (as nnn-retrieval)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", envvar="NNN_QUIET", help="No progress bar or summary on stderr.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
ThreadsOpt = Annotated[
    int, typer.Option("--threads", envvar="NNN_THREADS", min=0, help="CPU threads for faiss/BLAS (0: all cores).")
]
BlockOpt = Annotated[
    int, typer.Option("--block-size", envvar="NNN_BLOCK_SIZE", min=1,
                      help="Rows per block; bounds memory to about block x reference-size scores.")
]
AlphaOpt = Annotated[Optional[float], typer.Option("--alpha", "-a", help="Bias weight alpha (paper grid: 0.25..1.5).")]
KOpt = Annotated[Optional[int], typer.Option("--k", "-k", help="Number of nearest reference queries averaged.")]
ParamsOpt = Annotated[Optional[Path], typer.Option("--params", help="params.json from `nnn tune` (gives alpha and k).")]


def fail(message: str, code: int = 2) -> None:
    """Print one error line to stderr and exit."""
    err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: Callable) -> Callable:
    """Map library exceptions to exit 2, unexpected ones to exit 1, Ctrl-C to 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except NNNError as exc:
            fail(str(exc), 2)
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(0)
        except KeyboardInterrupt:
            err_console.print("Interrupted; no output was written.", markup=False)
            raise typer.Exit(130)
        except MemoryError:
            fail("out of memory; lower --block-size or use smaller inputs", 1)
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if os.environ.get("NNN_DEBUG"):
                raise
            fail(f"unexpected {type(exc).__name__}: {exc} (set NNN_DEBUG=1 for the traceback)", 1)

    return wrapper


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def show_progress(quiet: bool) -> bool:
    return not quiet and err_console.is_terminal


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool) -> Iterator[Optional[Callable[[int, int], None]]]:
    """Yield a ``progress(done, total)`` callback drawing a rich bar on a terminal, or None."""
    if not show_progress(quiet):
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def info(message: str, quiet: bool) -> None:
    if not quiet:
        err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def resolve_params(alpha: Optional[float], k: Optional[int], params: Optional[Path]) -> tuple[float, int]:
    """alpha and k from the options or a params file (exactly one of the two ways)."""
    from .io import read_params

    if params is not None:
        if alpha is not None or k is not None:
            raise ParameterError("give either --params or --alpha/--k, not both")
        p = read_params(params)
        return p["alpha"], p["k"]
    if alpha is None or k is None:
        raise ParameterError("give --alpha and --k (or --params PARAMS.json from `nnn tune`)")
    return alpha, k


def _setup(threads: int) -> None:
    from .topk import set_threads

    set_threads(threads)


# ---------------------------------------------------------------------------
# nnn bias
# ---------------------------------------------------------------------------
@app.command(
    "bias",
    epilog=(
        "Examples:\n\n"
        "  nnn bias gallery.h5 --reference ref.h5 --alpha 0.75 --k 16 -o bias.h5\n\n"
        "  nnn bias gallery.npy --reference ref.npy --params params.json -o bias.npy --metric ip"
    ),
)
@handle_errors
def bias_cmd(
    gallery: Annotated[str, typer.Argument(help="Gallery embeddings (.h5, FILE.h5:DATASET or .npy), shape (N, d).")],
    reference: Annotated[str, typer.Option("--reference", "-r", help="Reference query embeddings (M, d).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Bias file to write (.h5 or .npy).")],
    alpha: AlphaOpt = None,
    k: KOpt = None,
    params: ParamsOpt = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = 4096,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Compute each gallery item's bias: **alpha x mean of its k highest reference-query scores**.

    Exact (faiss flat inner product over blocks of the gallery); the bias is
    what `nnn search` and `nnn eval` subtract from that item's scores.
    """
    from .bias import check_alpha, check_k, compute_bias
    from .io import check_output_path, check_same_dim, open_embeddings, write_bias
    from .provenance import base_attrs, source_attrs

    alpha, k = resolve_params(alpha, k, params)
    check_alpha(alpha)
    g_src = open_embeddings(gallery, "gallery")
    r_src = open_embeddings(reference, "reference")
    check_same_dim(g_src, r_src)
    check_k(k, r_src.n)
    check_output_path(output, [gallery, reference])
    _setup(threads)

    t0 = time.perf_counter()
    g = g_src.read(metric.value)
    r = r_src.read(metric.value)
    with progress_bar("bias", quiet) as progress:
        b = compute_bias(g, r, alpha, k, block_rows=block_size, progress=progress)
    elapsed = time.perf_counter() - t0
    attrs = base_attrs("bias", alpha=alpha, k=k, metric=metric.value, seconds=round(elapsed, 3))
    attrs.update(source_attrs("gallery", g_src))
    attrs.update(source_attrs("reference", r_src))
    write_bias(output, b, attrs, ids=g_src.ids())
    summary = {
        "output": str(output), "n_gallery": g_src.n, "n_reference": r_src.n, "dim": g_src.dim,
        "alpha": alpha, "k": k, "metric": metric.value, "seconds": round(elapsed, 3),
        "bias_mean": float(b.mean()), "bias_min": float(b.min()), "bias_max": float(b.max()),
    }
    if json_out:
        print_json(summary)
    info(f"wrote {output}: {g_src.n} biases (alpha={alpha}, k={k}, metric={metric.value}, "
         f"{r_src.n} reference queries) in {elapsed:.2f}s; mean {b.mean():.4f}, range [{b.min():.4f}, {b.max():.4f}]",
         quiet)


# ---------------------------------------------------------------------------
# nnn search
# ---------------------------------------------------------------------------
@app.command(
    "search",
    epilog=(
        "Examples:\n\n"
        "  nnn search queries.h5 --gallery gallery.h5 --bias bias.h5 --top-k 10 -o results.h5\n\n"
        "  nnn search queries.h5 --gallery gallery.h5 --bias bias.h5 --top-k 5 -o - | head"
    ),
)
@handle_errors
def search_cmd(
    queries: Annotated[str, typer.Argument(help="Query embeddings (.h5, FILE.h5:DATASET or .npy), shape (Q, d).")],
    gallery: Annotated[str, typer.Option("--gallery", "-g", help="Gallery embeddings (N, d).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Results file (.h5/.npz), or - for JSON lines on stdout.")],
    bias: Annotated[Optional[str], typer.Option("--bias", "-b", help="Bias file from `nnn bias`; omit for plain search.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-n", min=1, help="Results per query.")] = 10,
    out_format: Annotated[Optional[OutFormat], typer.Option("--format", help="h5 (default for files) or jsonl.")] = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = 4096,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Top-N gallery items per query by the **debiased score s(q, r) - b(r)**.

    Uses the augmented-vector trick (r' = [r, b], q' = [q, -1]) in a faiss
    inner-product index: debiased search costs what plain search costs.
    Ties are broken by the lower gallery index.
    """
    from .io import check_output_path, check_same_dim, open_embeddings, read_bias, write_results
    from .provenance import base_attrs, source_attrs
    from .search import DebiasedIndex

    to_stdout = output == "-"
    fmt = out_format or (OutFormat.jsonl if to_stdout else OutFormat.h5)
    q_src = open_embeddings(queries, "queries")
    g_src = open_embeddings(gallery, "gallery")
    check_same_dim(q_src, g_src)
    b = None
    if bias is not None:
        bf = read_bias(bias)
        if len(bf.bias) != g_src.n:
            raise ParameterError(f"{bias}: holds {len(bf.bias)} biases but the gallery {g_src.name} has {g_src.n} rows; "
                                 "recompute it with `nnn bias` for this gallery")
        made_for = bf.attrs.get("metric")
        if made_for and made_for != metric.value:
            raise ParameterError(f"{bias}: was computed with --metric {made_for}, but this search uses --metric {metric.value}")
        b = bf.bias
    if not to_stdout:
        check_output_path(output, [queries, gallery, bias])
    _setup(threads)

    q = q_src.read(metric.value)
    g = g_src.read(metric.value)
    index = DebiasedIndex(g, b)
    with progress_bar("search", quiet) as progress:
        scores, idx = index.search(q, top_k, block_rows=block_size, progress=progress)
    g_ids = g_src.ids()
    ids = g_ids[idx] if g_ids is not None else None
    if fmt == OutFormat.jsonl:
        _write_jsonl(output, scores, idx, ids, q_src.ids())
        return
    attrs = base_attrs("search", top_k=top_k, metric=metric.value, debiased=b is not None,
                       bias_path=str(bias) if bias else None)
    attrs.update(source_attrs("queries", q_src))
    attrs.update(source_attrs("gallery", g_src))
    write_results(output, idx, scores, ids, attrs)
    info(f"wrote {output}: top-{idx.shape[1]} of {g_src.n} for {q_src.n} queries"
         f" ({'debiased' if b is not None else 'plain'} scores)", quiet)


def _jsonl_lines(scores, idx, ids, query_ids) -> Iterator[str]:
    for qi in range(len(idx)):
        results = []
        for rank in range(idx.shape[1]):
            item = {"rank": rank + 1, "index": int(idx[qi, rank]), "score": round(float(scores[qi, rank]), 6)}
            if ids is not None:
                item["id"] = str(ids[qi, rank])
            results.append(item)
        rec = {"query": qi}
        if query_ids is not None:
            rec["query_id"] = str(query_ids[qi])
        rec["results"] = results
        yield json.dumps(rec)


def _write_jsonl(output: str, scores, idx, ids, query_ids) -> None:
    lines = _jsonl_lines(scores, idx, ids, query_ids)
    if output == "-":
        out = sys.stdout
        for line in lines:
            out.write(line + "\n")
        out.flush()
        return
    from .io import atomic_output

    with atomic_output(Path(output)) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for line in lines:
                fh.write(line + "\n")


# ---------------------------------------------------------------------------
# nnn eval
# ---------------------------------------------------------------------------
@app.command(
    "eval",
    epilog=(
        "Examples:\n\n"
        "  nnn eval --queries q.h5 --gallery g.h5 --truth truth.npy --bias bias.h5\n\n"
        "  nnn eval --queries q.h5 --gallery g.h5 --truth truth.npy --reference ref.h5 --alpha 0.75 --k 16 --json"
    ),
)
@handle_errors
def eval_cmd(
    queries: Annotated[str, typer.Option("--queries", "-Q", help="Query embeddings (Q, d).")],
    gallery: Annotated[str, typer.Option("--gallery", "-g", help="Gallery embeddings (N, d).")],
    truth: Annotated[str, typer.Option("--truth", "-t", help="Ground truth: .npy (Q,) or (P, 2), .h5 'truth', or .csv/.tsv of ids.")],
    bias: Annotated[Optional[str], typer.Option("--bias", "-b", help="Bias file from `nnn bias`.")] = None,
    reference: Annotated[Optional[str], typer.Option("--reference", "-r", help="Reference queries, to compute the bias here.")] = None,
    alpha: AlphaOpt = None,
    k: KOpt = None,
    params: ParamsOpt = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = 4096,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Recall@1/5/10 (percent) and hubness, **baseline and NNN side by side**.

    A query is a hit at K when any of its correct items is in its top K.
    Hubness: how many queries retrieve each gallery item at rank 1 (max,
    skewness, kurtosis, share never retrieved), as in the paper's Table 3.
    """
    from .bias import check_alpha, check_k, compute_bias
    from .evaluate import evaluate_index
    from .io import check_same_dim, open_embeddings, read_bias, read_truth

    if (bias is None) == (reference is None):
        raise ParameterError("give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)")
    q_src = open_embeddings(queries, "queries")
    g_src = open_embeddings(gallery, "gallery")
    check_same_dim(q_src, g_src)
    r_src = None
    if reference is not None:
        alpha, k = resolve_params(alpha, k, params)
        check_alpha(alpha)
        r_src = open_embeddings(reference, "reference")
        check_same_dim(q_src, g_src, r_src)
        check_k(k, r_src.n)
    tr = read_truth(truth, q_src.n, g_src.n, q_src.ids(), g_src.ids())
    _setup(threads)

    q = q_src.read(metric.value)
    g = g_src.read(metric.value)
    params_used: dict = {}
    if bias is not None:
        bf = read_bias(bias)
        if len(bf.bias) != g_src.n:
            raise ParameterError(f"{bias}: holds {len(bf.bias)} biases but the gallery {g_src.name} has {g_src.n} rows")
        made_for = bf.attrs.get("metric")
        if made_for and made_for != metric.value:
            raise ParameterError(f"{bias}: was computed with --metric {made_for}, but this eval uses --metric {metric.value}")
        b = bf.bias
        params_used = {key: bf.attrs[key] for key in ("alpha", "k") if key in bf.attrs}
    else:
        with progress_bar("bias", quiet) as progress:
            b = compute_bias(g, r_src.read(metric.value), alpha, k, block_rows=block_size, progress=progress)
        params_used = {"alpha": alpha, "k": k}
    with progress_bar("eval", quiet) as progress:
        base = evaluate_index(q, g, tr, None, block_rows=block_size, progress=progress)
        nnn = evaluate_index(q, g, tr, b, block_rows=block_size, progress=progress)
    n_with = int(tr.has_truth().sum())
    result = {
        "baseline": base.to_dict(),
        "nnn": nnn.to_dict(),
        "params": params_used,
        "metric": metric.value,
        "n_queries": q_src.n,
        "n_queries_with_truth": n_with,
        "n_gallery": g_src.n,
    }
    if json_out:
        print_json(result)
        return
    render_eval_table(result)


def render_eval_table(result: dict) -> None:
    """A rich table: baseline, NNN and the change, for recall and hubness."""
    p = result.get("params", {})
    title = f"NNN evaluation ({result['n_queries_with_truth']} queries, {result['n_gallery']} gallery items"
    if p:
        title += f", alpha={p.get('alpha')}, k={p.get('k')}"
    table = Table(title=title + ")")
    table.add_column("metric")
    table.add_column("baseline", justify="right")
    table.add_column("NNN", justify="right")
    table.add_column("change", justify="right")
    base, nnn = result["baseline"], result["nnn"]
    for key in ("R@1", "R@5", "R@10"):
        d = nnn[key] - base[key]
        colour = "green" if d > 0 else "red" if d < 0 else "white"
        table.add_row(key, f"{base[key]:.2f}", f"{nnn[key]:.2f}", f"[{colour}]{d:+.2f}[/]")
    hb, hn = base["hubness"], nnn["hubness"]
    table.add_section()
    table.add_row("hub max (queries at rank 1)", str(hb["max"]), str(hn["max"]), f"{hn['max'] - hb['max']:+d}")
    for key, label in (("skewness", "hub skewness"), ("kurtosis", "hub kurtosis"), ("mae", "hub MAE")):
        table.add_row(label, f"{hb[key]:.2f}", f"{hn[key]:.2f}", f"{hn[key] - hb[key]:+.2f}")
    table.add_row("never retrieved (share)", f"{hb['never_retrieved']:.3f}", f"{hn['never_retrieved']:.3f}",
                  f"{hn['never_retrieved'] - hb['never_retrieved']:+.3f}")
    out_console.print(table)


# ---------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------
def version_callback(value: bool) -> None:
    if value:
        print(f"nnn {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Nearest Neighbor Normalization for contrastive retrieval."""


def main() -> None:
    """Console entry point (``nnn``)."""
    try:
        app()
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(0)
