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
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Use a bias file even if it records another gallery (content fingerprint) or metric.")]


def fail(message: str, code: int = 2) -> None:
    """Print one error line to stderr and exit."""
    err_console.print(f"Error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(func: Callable) -> Callable:
    """Map library exceptions to exit 2, unexpected ones to exit 1, Ctrl-C to 130, SIGTERM to 143."""

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
        except KeyboardInterrupt as exc:
            from .signals import Terminated, exit_code

            what = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
            err_console.print(f"{what}; no output was written.", markup=False)
            raise typer.Exit(exit_code(exc))
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
        "  nnn bias gallery.npy --reference ref.npy --params params.json -o bias.npy --metric ip\n\n"
        "  nnn bias new_items.h5 --reference ref.h5 --append-to bias.h5\n\n"
        "  nnn bias gallery.h5 --update bias.h5 --reference-add todays_queries.h5"
    ),
)
@handle_errors
def bias_cmd(
    gallery: Annotated[str, typer.Argument(help="Gallery embeddings (.h5, FILE.h5:DATASET or .npy), shape (N, d); "
                                               "with --append-to: only the NEW items.")],
    reference: Annotated[Optional[str], typer.Option("--reference", "-r", help="Reference query embeddings (M, d).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Bias file to write (.h5 or .npy); "
                                                   "with --append-to/--update defaults to that file.")] = None,
    alpha: AlphaOpt = None,
    k: KOpt = None,
    params: ParamsOpt = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = 4096,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    append_to: Annotated[Optional[Path], typer.Option(
        "--append-to", help="Existing bias .h5: compute only the NEW gallery items given as GALLERY and append "
                            "them (checks --reference/alpha/k/metric match the file).")] = None,
    update: Annotated[Optional[Path], typer.Option(
        "--update", help="Existing bias .h5 for GALLERY: merge in --reference-add queries (cost N x M_new).")] = None,
    reference_add: Annotated[Optional[str], typer.Option(
        "--reference-add", help="New reference queries to fold into --update's bias file.")] = None,
    store_topk: Annotated[bool, typer.Option(
        "--store-topk/--no-store-topk", help="Store each item's top-k reference scores (dataset 'topk', N x k "
                                             "float32) so `--update` can add reference queries later.")] = True,
) -> None:
    """Compute each gallery item's bias: **alpha x mean of its k highest reference-query scores**.

    Exact (faiss flat inner product over blocks of the gallery); the bias is
    what `nnn search` and `nnn eval` subtract from that item's scores.
    Incremental, still exact: `--append-to BIAS.h5` adds new gallery items,
    `--update BIAS.h5 --reference-add NEW.h5` adds new reference queries.
    """
    from .bias import bias_from_topk, check_alpha, check_k, reference_topk
    from .io import check_output_path, check_same_dim, open_embeddings, write_bias
    from .provenance import base_attrs, bias_provenance

    if append_to is not None or update is not None or reference_add is not None:
        _bias_incremental(gallery, reference, output, alpha, k, params, metric.value, block_size, threads,
                          quiet, json_out, append_to, update, reference_add)
        return
    if reference is None or output is None:
        raise ParameterError("give --reference R and -o BIAS.h5 (or --append-to / --update an existing bias file)")
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
        topk = reference_topk(g, r, k, block_rows=block_size, progress=progress)
    b = bias_from_topk(topk, alpha, k)
    elapsed = time.perf_counter() - t0
    attrs = base_attrs("bias", alpha=alpha, k=k, metric=metric.value, seconds=round(elapsed, 3))
    attrs.update(bias_provenance(g_src, r_src))
    write_bias(output, b, attrs, ids=g_src.ids(), extra={"topk": topk} if store_topk else None)
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


def _bias_incremental(gallery: str, reference: Optional[str], output: Optional[Path], alpha: Optional[float],
                      k: Optional[int], params: Optional[Path], metric: str, block_size: int, threads: int,
                      quiet: bool, json_out: bool, append_to: Optional[Path], update: Optional[Path],
                      reference_add: Optional[str]) -> None:
    """`nnn bias --append-to` / `--update --reference-add`: validate, call nnn_cli.incremental, write."""
    from .incremental import add_reference, append_items, load_stored_bias
    from .io import check_output_path, open_embeddings, write_bias

    if params is not None:
        alpha, k = resolve_params(alpha, k, params)
    if (append_to is None) == (update is None):
        raise ParameterError("give either --append-to BIAS.h5 (new gallery items) or --update BIAS.h5 "
                             "--reference-add NEW (new reference queries), not both")
    if append_to is not None:
        if reference is None or reference_add is not None:
            raise ParameterError("--append-to needs --reference R (the file's reference) and no --reference-add")
        target = append_to
    else:
        if reference_add is None or reference is not None:
            raise ParameterError("--update needs --reference-add NEW_QUERIES (and no --reference)")
        target = update
    output = output or target
    stored = load_stored_bias(target)
    inputs = [gallery, reference, reference_add]
    check_output_path(output, inputs)
    _setup(threads)
    t0 = time.perf_counter()
    with progress_bar("bias", quiet) as progress:
        if append_to is not None:
            new_src = open_embeddings(gallery, "new gallery items")
            ref_src = open_embeddings(reference, "reference")
            b, topk, ids, attrs = append_items(stored, new_src, ref_src, metric, alpha, k, block_size, progress)
            what = f"appended {new_src.n} items"
        else:
            g_src = open_embeddings(gallery, "gallery")
            new_src = open_embeddings(reference_add, "new reference queries")
            b, topk, ids, attrs = add_reference(stored, g_src, new_src, metric, alpha, k, block_size, progress)
            what = f"added {new_src.n} reference queries"
    elapsed = time.perf_counter() - t0
    write_bias(output, b, attrs, ids=ids, extra={"topk": topk} if topk is not None else None)
    summary = {"output": str(output), "operation": "append" if append_to is not None else "reference-add",
               "n_added": new_src.n, "n_gallery": int(attrs.get("n_gallery", len(b))),
               "n_reference": int(attrs.get("n_reference", 0)), "alpha": stored.alpha, "k": stored.k,
               "metric": stored.metric, "seconds": round(elapsed, 3)}
    if json_out:
        print_json(summary)
    info(f"wrote {output}: {what}; {len(b)} biases against {summary['n_reference']} reference queries "
         f"in {elapsed:.2f}s", quiet)


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
    force: ForceOpt = False,
) -> None:
    """Top-N gallery items per query by the **debiased score s(q, r) - b(r)**.

    Uses the augmented-vector trick (r' = [r, b], q' = [q, -1]) in a faiss
    inner-product index: debiased search costs what plain search costs.
    Ties are broken by the lower gallery index.
    """
    from .io import check_output_path, check_same_dim, open_embeddings, read_bias, write_results
    from .provenance import base_attrs, check_bias_matches, source_attrs
    from .search import DebiasedIndex

    to_stdout = output == "-"
    fmt = out_format or (OutFormat.jsonl if to_stdout else OutFormat.h5)
    q_src = open_embeddings(queries, "queries")
    g_src = open_embeddings(gallery, "gallery")
    check_same_dim(q_src, g_src)
    b = None
    if bias is not None:
        bf = read_bias(bias)
        if len(bf.bias) != g_src.n or bf.attrs.get("metric", metric.value) != metric.value:
            check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric.value, force)
        b = bf.bias
    if not to_stdout:
        check_output_path(output, [queries, gallery, bias])
    _setup(threads)

    q = q_src.read(metric.value)
    g = g_src.read(metric.value)
    if bias is not None:
        check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric.value, force)
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
    force: ForceOpt = False,
    methods: Annotated[str, typer.Option(
        "--methods", "-m", envvar="NNN_METHODS",
        help="Comma list of: baseline, nnn, dn, qbnorm, dbnorm (DualIS), dbnorm_dis (DualDIS); baseline always runs.")] = "baseline,nnn",
    dn_lambda: Annotated[float, typer.Option("--dn-lambda", help="DN: weight of the subtracted reference means (Zhou et al.: 0.5).")] = 0.5,
    qb_beta: Annotated[float, typer.Option("--qb-beta", help="QBNorm: inverse temperature beta of the querybank softmax.")] = 20.0,
    db_beta1: Annotated[float, typer.Option("--db-beta1", help="DBNorm: beta1 of the gallery-bank softmax (0 = QBNorm).")] = 1.0,
    db_beta2: Annotated[float, typer.Option("--db-beta2", help="DBNorm: beta2 of the query-bank softmax.")] = 50.0,
    gallery_bank: Annotated[Optional[str], typer.Option(
        "--gallery-bank", help="DN/DBNorm gallery-side reference bank (N', d); default: the gallery itself.")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples of the queries for 95% intervals (0: none).")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the bootstrap.")] = 0,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Folder to write PNG pictures into (hubness, recall); needs matplotlib.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write one self-contained HTML page with tables and pictures.")] = None,
) -> None:
    """Recall@1/5/10 (percent) and hubness, **baseline and NNN side by side**.

    A query is a hit at K when any of its correct items is in its top K.
    Hubness: how many queries retrieve each gallery item at rank 1 (max,
    skewness, kurtosis, share never retrieved), as in the paper's Table 3.
    `--methods` adds the paper's comparison methods (DN, QBNorm, DBNorm
    DualIS/DualDIS; they use --reference as their query bank), each timed;
    `--bootstrap N` adds 95% intervals ("R@1_ci"...); `--plots`/`--report`
    draw the hubness histogram and write an HTML page.
    """
    from .baselines import BANK_METHODS, BaselineParams, parse_methods
    from .bias import check_alpha, check_k
    from .compare import compare_methods
    from .io import check_same_dim, open_embeddings, read_bias, read_truth
    from .provenance import check_bias_matches

    method_list = tuple(dict.fromkeys(("baseline",) + parse_methods(methods)))
    method_params = BaselineParams(dn_lambda, qb_beta, db_beta1, db_beta2).check()
    want_nnn = "nnn" in method_list
    need_bank = any(m in BANK_METHODS for m in method_list)
    if bias is None and reference is None:
        raise ParameterError("give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)")
    if bias is not None and reference is not None and not need_bank:
        raise ParameterError("give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)")
    if need_bank and reference is None:
        raise ParameterError("methods dn, qbnorm, dbnorm and dbnorm_dis need --reference (their query bank)")
    if gallery_bank is not None and not need_bank:
        raise ParameterError("--gallery-bank is used only by --methods dn, dbnorm or dbnorm_dis")
    if plots is not None and plots.exists() and not plots.is_dir():
        raise ParameterError(f"{plots}: --plots must be a folder")
    if report is not None:
        from .io import check_output_path

        check_output_path(report, [queries, gallery, truth, bias, reference])
    q_src = open_embeddings(queries, "queries")
    g_src = open_embeddings(gallery, "gallery")
    check_same_dim(q_src, g_src)
    r_src = gb_src = None
    if gallery_bank is not None:
        gb_src = open_embeddings(gallery_bank, "gallery bank")
        check_same_dim(q_src, g_src, gb_src)
    if reference is not None:
        r_src = open_embeddings(reference, "reference")
        check_same_dim(q_src, g_src, r_src)
    if want_nnn and bias is None:
        alpha, k = resolve_params(alpha, k, params)
        check_alpha(alpha)
        check_k(k, r_src.n)
    tr = read_truth(truth, q_src.n, g_src.n, q_src.ids(), g_src.ids())
    _setup(threads)

    q = q_src.read(metric.value)
    g = g_src.read(metric.value)
    params_used: dict = {}
    b = None
    if bias is not None:
        bf = read_bias(bias)
        check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric.value, force)
        b = bf.bias
        params_used = {key: bf.attrs[key] for key in ("alpha", "k") if key in bf.attrs}
    elif want_nnn:
        params_used = {"alpha": alpha, "k": k}
    ref = r_src.read(metric.value) if r_src is not None else None
    with progress_bar("eval", quiet) as progress:
        runs = compare_methods(
            q, g, tr, method_list, reference=ref, bias=b, nnn_alpha=alpha, nnn_k=k, params=method_params,
            gallery_bank=gb_src.read(metric.value) if gb_src is not None else None,
            bootstrap=bootstrap, seed=seed, block_rows=block_size, progress=progress)
    n_with = int(tr.has_truth().sum())
    result = {name: run.result.to_dict() for name, run in runs.items()}
    result.update({
        "params": params_used,
        "metric": metric.value,
        "n_queries": q_src.n,
        "n_queries_with_truth": n_with,
        "n_gallery": g_src.n,
    })
    if need_bank:
        result["gallery_bank"] = gb_src.name if gb_src is not None else "gallery"
    if bootstrap:
        result.update({"bootstrap": bootstrap, "seed": seed})
    if plots is not None or report is not None:
        result["pictures"] = _eval_pictures(runs, result, plots, report, g_src.n)
    if json_out:
        print_json(result)
    elif set(runs) == {"baseline", "nnn"} and not bootstrap:
        render_eval_table(result)
    else:
        render_methods_table(result)
    if report is not None:
        info(f"wrote {report}", quiet or json_out)


def _eval_pictures(runs, result: dict, plots: Optional[Path], report: Optional[Path], n_gallery: int) -> list[str]:
    """Write the eval PNGs (into --plots, or a temporary folder) and the --report page; return PNG paths kept."""
    import tempfile

    from .metrics import retrieval_counts
    from .plots import plot_hubness, plot_recall_bars
    from .report import METHOD_LABELS, write_report

    with tempfile.TemporaryDirectory(prefix="nnn-plots-") as tmp:
        folder = plots if plots is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        shown = [m for m in ("baseline", "nnn") if m in runs] if "nnn" in runs else list(runs)
        images = {
            "Queries retrieved (rank 1) per gallery item, before and after": plot_hubness(
                {METHOD_LABELS[m]: retrieval_counts(runs[m].topk[:, 0], n_gallery) for m in shown},
                folder / "hubness.png"),
        }
        if len(runs) > 2:
            images["Hubness, every method"] = plot_hubness(
                {METHOD_LABELS[m]: retrieval_counts(r.topk[:, 0], n_gallery) for m, r in runs.items()},
                folder / "hubness_all.png", title="Hubness: every method")
        images["Recall@1 by method"] = plot_recall_bars(
            {METHOD_LABELS[m]: result[m] for m in runs}, folder / "recall.png")
        if report is not None:
            write_report(report, result, images)
        return [str(p) for p in images.values()] if plots is not None else []


def render_methods_table(result: dict) -> None:
    """A rich table with one row per method: recall (with 95% intervals when bootstrapped), hub max, seconds."""
    from .baselines import METHODS
    from .report import METHOD_LABELS

    table = Table(title=f"Retrieval by method ({result['n_queries_with_truth']} queries, "
                        f"{result['n_gallery']} gallery items)")
    table.add_column("method")
    for key in ("R@1", "R@5", "R@10"):
        table.add_column(key, justify="right")
    table.add_column("hub max", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("parameters")
    for m in METHODS:
        if m not in result:
            continue
        r = result[m]
        cells = []
        for key in ("R@1", "R@5", "R@10"):
            ci = r.get(f"{key}_ci")
            cells.append(f"{r[key]:.2f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""))
        p = r.get("params") or (result.get("params") if m == "nnn" else {}) or {}
        table.add_row(METHOD_LABELS[m], *cells, str(r["hubness"]["max"]), f"{r['seconds']:.3f}",
                      ", ".join(f"{a}={v}" for a, v in p.items()))
    out_console.print(table)


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
    from .signals import handle_sigterm

    handle_sigterm()
    try:
        app()
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(0)
