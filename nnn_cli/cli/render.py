"""Everything the CLI shows: consoles, progress bars, notes, JSON, tables.  Nothing here computes."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from rich.console import Console


def _pipe_width(stream) -> int | None:
    """Width for rich when writing to a pipe or log file: 120 columns unless COLUMNS says otherwise
    (rich's default of 80 wraps our tables mid-word); None (the terminal's) on a terminal."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return None if tty or os.environ.get("COLUMNS") else 120


def _make_console(**kwargs: Any) -> Console:
    """rich's Console, but a closed pipe ends the command quietly with exit 0 (like `nnn search -o - | head`),
    where rich's default exits 1, and a full disk under a table or a note is one line naming the stream."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            silence_stdout()
            raise SystemExit(0)

        def _check_buffer(self) -> None:
            try:
                super()._check_buffer()
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise StdoutSink(self.file, "<stderr>" if self.stderr else "<stdout>")._failed(exc) from None

    return _Console(**kwargs)


class _LazyConsole:
    """A console made on first use: rich is imported only by a run that shows something (measured: rich's
    console, progress and table modules are 40-60 ms of every start, and a quiet run that succeeds shows
    nothing)."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            self._console = _make_console(
                **self._kwargs, width=_pipe_width(sys.stderr if self._kwargs.get("stderr") else sys.stdout)
            )
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


def _table(*args: Any, **kwargs: Any) -> Any:
    """A rich Table (rich imported here, by the runs that show one)."""
    from rich.table import Table

    return Table(*args, **kwargs)


err_console: Any = _LazyConsole(stderr=True, highlight=False)
out_console: Any = _LazyConsole(highlight=False)


def show_progress(quiet: bool) -> bool:
    return not quiet and err_console.is_terminal


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool) -> Iterator[Optional[Callable[[int, int], None]]]:
    """Yield a ``progress(done, total)`` callback drawing a rich bar on a terminal, or None."""
    if not show_progress(quiet):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console.get(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            release_notes()
            bar.update(task, completed=done, total=total)

        yield update


_held_notes: list[str] = []


def release_notes() -> None:
    """Print the notes held so far (see :func:`note_printer`)."""
    while _held_notes:
        err_console.print(_held_notes.pop(0), markup=False, highlight=False, soft_wrap=True)


def drop_notes() -> None:
    """Forget the held notes: the command failed, and its one error line is all stderr gets."""
    _held_notes.clear()


def info(message: str, quiet: bool) -> None:
    release_notes()
    if not quiet:
        err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def print_json(obj) -> None:
    out = StdoutSink(sys.stdout, "<stdout>")
    out.write(json.dumps(obj, indent=2) + "\n")
    out.flush()


@contextlib.contextmanager
def embed_progress(quiet: bool) -> Iterator[Optional[Callable[[int, int], None]]]:
    """Like :func:`progress_bar`, with an items/s column (rate of this run, resumed rows excluded)."""
    if not show_progress(quiet):
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.1f} items/s" if speed else "- items/s")

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console.get(),
        transient=True,
    ) as bar:
        task = bar.add_task("embed", total=None)
        first: list[int] = []

        def update(done: int, total: int) -> None:
            release_notes()
            if not first:  # start the bar at the resumed position so the rate counts new work only
                first.append(done)
                bar.reset(task, total=total, completed=done)
                return
            bar.update(task, completed=done, total=total)

        yield update


def note_printer(quiet: bool) -> Callable[[str], None]:
    """A job's ``on_note``: each note one line on stderr, unless quiet.  Notes are held until the job
    succeeds (or its progress bar starts): a command refused for bad input prints its one error line
    only, never a plan it did not run ("index: ...") above it."""

    def note(line: str) -> None:
        if not quiet:
            _held_notes.append(line)

    return note


class StdoutSink:
    """Standard output for ``-o -``: an OS error while writing (a full disk, an I/O error) becomes the
    one-line :class:`~nnn_cli.errors.OutputError` naming the output (exit 2); a closed pipe stays a
    BrokenPipeError (exit 0).  Text or binary, as the stream it wraps."""

    def __init__(self, raw, name: str = "<stdout> (-o -)") -> None:
        self._raw = raw
        self._name = name

    def _failed(self, exc: OSError) -> Exception:
        from nnn_cli.jobs.common import output_error

        silence_stdout()  # the interpreter's last flush must not print a second error
        return output_error(self._name, exc)

    def write(self, data):
        try:
            return self._raw.write(data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        try:
            self._raw.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None

    def __getattr__(self, name: str):
        return getattr(self._raw, name)


def flush_stdout() -> None:
    """Flush stdout at the end of a command: a full disk there is one line naming it (exit 2), not a
    traceback at interpreter exit."""
    StdoutSink(sys.stdout, "<stdout>").flush()


def silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def render_methods_table(result: dict) -> None:
    """A rich table with one row per method: recall (with 95% intervals when bootstrapped), hub max, seconds."""
    from nnn_cli.jobs.eval import METHOD_LABELS

    table = _table(
        title=f"Retrieval by method ({result['n_queries_with_truth']} queries, {result['n_gallery']} gallery items)"
    )
    table.add_column("method")
    for key in ("R@1", "R@5", "R@10"):
        table.add_column(key, justify="right")
    table.add_column("hub max", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("params", overflow="fold")
    for m in METHOD_LABELS:
        if m not in result:
            continue
        r = result[m]
        cells = []
        for key in ("R@1", "R@5", "R@10"):
            ci = r.get(f"{key}_ci")
            cells.append(f"{r[key]:.2f}" + (f"\n{ci[0]:.1f}-{ci[1]:.1f}" if ci else ""))
        p = r.get("params") or (result.get("params") if m == "nnn" else {}) or {}
        table.add_row(
            METHOD_LABELS[m],
            *cells,
            str(r["hubness"]["max"]),
            f"{r['seconds']:.3f}",
            "\n".join(f"{a}={v:g}" if isinstance(v, float) else f"{a}={v}" for a, v in p.items()),
        )
    if any("R@1_ci" in result.get(m, {}) for m in METHOD_LABELS):
        table.caption = "under each recall: its 95% bootstrap interval"
    out_console.print(table)


def render_eval_table(result: dict) -> None:
    """A rich table: baseline, NNN and the change, for recall and hubness."""
    p = result.get("params", {})
    title = f"NNN evaluation ({result['n_queries_with_truth']} queries, {result['n_gallery']} gallery items"
    if p:
        title += f", alpha={p.get('alpha')}, k={p.get('k')}"
    table = _table(title=title + ")")
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
    table.add_row(
        "never retrieved (share)",
        f"{hb['never_retrieved']:.3f}",
        f"{hn['never_retrieved']:.3f}",
        f"{hn['never_retrieved'] - hb['never_retrieved']:+.3f}",
    )
    out_console.print(table)


def render_info(desc: dict) -> None:
    """Two rich tables: the arrays, then the recorded attributes (history one line per operation)."""
    if not desc.get("_store"):  # a store table's header is printed by its caller
        out_console.print(f"[bold]{desc['path']}[/]: {desc['kind']} ({desc['format']}, {desc['bytes']:,} bytes)")
    if desc.get("fingerprint"):
        out_console.print(f"content fingerprint: {desc['fingerprint']}", markup=False)
    if desc["datasets"]:
        table = _table(title="arrays")
        for col in ("name", "shape", "dtype"):
            table.add_column(col)
        for name, entry in desc["datasets"].items():
            table.add_row(name or "(array)", " x ".join(map(str, entry["shape"])) or "scalar", entry["dtype"])
        out_console.print(table)
    attrs = dict(desc["attrs"])
    history = attrs.pop("history", None)
    if attrs:
        table = _table(title="recorded")
        table.add_column("attribute")
        table.add_column("value", overflow="fold")
        for key, value in attrs.items():
            text = value if isinstance(value, str) else json.dumps(value)
            table.add_row(key, text)
        out_console.print(table)
    if isinstance(history, list) and history:
        table = _table(title="history")
        for col in ("time", "op", "rows", "source", "fingerprint"):
            table.add_column(col)
        for entry in history:
            table.add_row(
                str(entry.get("time", "")),
                str(entry.get("op", "")),
                str(entry.get("n_added", "")),
                str(entry.get("source", "")),
                str(entry.get("fingerprint", ""))[:12],
            )
        out_console.print(table)


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
    table = _table(
        title=f"nnn tune ({what}): baseline {fmt(result.baseline)}, "
        f"*best alpha={result.alpha:g}, k={result.k}: {fmt(result.score)}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
    )
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
    console = out_console if out_console.width >= needed else _make_console(highlight=False, width=needed)
    console.print(table)
    if unsupervised and "R@1" in result.baseline_metrics:
        best = result.cell(result.alpha, result.k)
        out_console.print(
            f"check against --truth (not used for the choice): R@1 {best['R@1']:.2f} at the pick, "
            f"{max(e['R@1'] for e in result.grid):.2f} best in the grid, "
            f"{result.baseline_metrics['R@1']:.2f} baseline"
        )


def render_method_sweep(method: str, doc: dict) -> None:
    """`nnn tune --method`: every grid point's recall, the best marked with *."""
    best_text = ", ".join(f"{n}={v:g}" for n, v in doc["best"].items())
    table = _table(title=f"nnn tune --method {method}: best {best_text} -> R@1 {doc['R@1']:.2f}")
    names = list(doc["best"])
    for col in names + ["R@1", "R@5", "R@10"]:
        table.add_column(col, justify="right")
    for point in doc["grid"]:
        mark = "*" if all(point[n] == doc["best"][n] for n in names) else ""
        table.add_row(*[f"{point[n]:g}" for n in names], *[f"{mark}{point[key]:.2f}" for key in ("R@1", "R@5", "R@10")])
    out_console.print(table)


def render_attribute_table(result: dict) -> None:
    """`nnn attribute-bias`: bias (and precision) at each n, baseline and NNN."""
    with_precision = any("precision" in rec["baseline"] for rec in result["at"].values())
    table = _table(
        title=f"Attribute bias (#{result['group_a']} - #{result['group_b']}) / n over {result['n_queries']} queries"
    )
    for col in ("n", "bias baseline", "bias NNN"):
        table.add_column(col, justify="right")
    if with_precision:
        table.add_column("precision@n baseline", justify="right")
        table.add_column("precision@n NNN", justify="right")
    for n, rec in result["at"].items():
        row = [n, f"{rec['baseline']['bias']:+.3f}", f"{rec['nnn']['bias']:+.3f}"]
        if with_precision:
            row += [f"{100 * rec['baseline']['precision']:.1f}%", f"{100 * rec['nnn']['precision']:.1f}%"]
        table.add_row(*row)
    if "n_groups" in result:
        table.caption = f"bias: mean over {result['n_groups']} query groups (per-group values in --json)"
    out_console.print(table)
    if result.get("precision_at"):
        prec = _table(title="precision@n (share of the top n that are correct items)")
        for col in ("n", "baseline", "NNN"):
            prec.add_column(col, justify="right")
        for n, rec in result["precision_at"].items():
            prec.add_row(str(n), f"{100 * rec['baseline']['precision']:.1f}%", f"{100 * rec['nnn']['precision']:.1f}%")
        out_console.print(prec)


def print_json_lines(records) -> None:
    """One compact JSON object per line on stdout (as `nnn search -o -`)."""
    out = StdoutSink(sys.stdout, "<stdout>")
    for rec in records:
        out.write(json.dumps(rec) + "\n")
    out.flush()


def render_query(result: dict) -> None:
    """`nnn query`: one small table per text (rank, id, score)."""
    what = "debiased score s(q, r) - b(r)" if result["debiased"] else "plain score (give --bias for NNN)"
    for rec in result["results"]:
        table = _table(title=f"{rec['query_text']!r}  ({what}; model {rec['model']})")
        table.add_column("rank", justify="right")
        table.add_column("id")
        table.add_column("index", justify="right")
        table.add_column("score", justify="right")
        for item in rec["results"]:
            table.add_row(str(item["rank"]), str(item.get("id", "")), str(item["index"]), f"{item['score']:.4f}")
        out_console.print(table)
