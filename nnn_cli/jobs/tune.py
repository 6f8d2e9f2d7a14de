"""`nnn tune`: choose alpha and k (or a comparison method's settings) by sweeping a grid; writes params.json.

Typed API: :class:`TuneRequest` (numbers and lists, validated once, where it is built) ->
:func:`run_tune` -> :class:`TuneJobResult`, whose :meth:`~TuneJobResult.to_json` is the ``--json``
document (the params file).  :func:`tune` builds the request from keyword arguments::

    jobs.tune("g.h5", "r.h5", "params.json", queries="q.h5", truth="t.npy", alphas=[0.5, 0.75], ks=[8, 16])
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nnn_cli.core import methods as registry
from nnn_cli.core.baselines import DENSE_MODES
from nnn_cli.core.nnn import check_alpha
from nnn_cli.core.tune import OBJECTIVES, TuneResult, check_grid, split_reference, tune_grid, tune_unsupervised
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.outputs import check_output_path, write_json
from nnn_cli.data.provenance import run_provenance
from nnn_cli.data.tables import read_truth
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import NoteFn, Notes, PathLike, ProgressFn, setup_threads
from nnn_cli.jobs.protocol import apply_fraction, check_fraction, leak_check

PAPER_ALPHAS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.375, 1.5)
PAPER_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PAPER_ALPHAS_TEXT = ",".join(f"{a:g}" for a in PAPER_ALPHAS)
PAPER_KS_TEXT = ",".join(str(k) for k in PAPER_KS)


def _numbers(values: Any, what: str, cast=float) -> tuple:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ParameterError(f"{what} must be a non-empty list of numbers, got {values!r}")
    try:
        out = tuple(cast(v) for v in values)
    except (TypeError, ValueError):
        raise ParameterError(f"{what} must be a list of numbers, got {list(values)!r}") from None
    bad = [v for v in values if cast is int and (float(v) != int(float(v)) or int(float(v)) < 1)]
    if bad:
        raise ParameterError(f"k must be an integer >= 1, got {bad[0]} (in {what})")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class TuneRequest:
    """Everything ``nnn tune`` needs, validated when built (paths are checked when the job opens them)."""

    gallery: PathLike
    reference: PathLike
    output: PathLike
    queries: Optional[PathLike] = None
    truth: Optional[PathLike] = None
    alphas: Sequence[float] = PAPER_ALPHAS
    ks: Sequence[int] = PAPER_KS
    objective: str = "R@1"
    unsupervised: bool = False
    holdout: float = 0.2
    tolerance: float = 0.001
    metric: str = "cosine"
    threads: int = 0
    method: str = "nnn"
    method_grid: Optional[Mapping[str, Sequence[float]]] = None
    gallery_bank: Optional[PathLike] = None
    plot: Optional[PathLike] = None
    db_dense: str = "around"
    activation_k: int = 1
    reference_fraction: float = 1.0
    seed: int = 0
    strict: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "alphas", tuple(check_alpha(a) for a in _numbers(self.alphas, "alphas")))
        set_(self, "ks", _numbers(self.ks, "ks", int))
        set_(self, "method", "nnn" if self.method == "nnn" else _tunable(self.method))
        set_(self, "method_grid", _grid(self.method, self.method_grid))
        if self.db_dense not in DENSE_MODES:
            raise ParameterError(f"unknown --db-dense {self.db_dense!r}: use {', '.join(DENSE_MODES)}")
        if self.activation_k < 1 or self.activation_k != int(self.activation_k):
            raise ParameterError(f"--activation-k must be an integer >= 1, got {self.activation_k}")
        check_fraction(self.reference_fraction)
        if self.objective not in OBJECTIVES:
            raise ParameterError(f"unknown --objective {self.objective!r}: use {', '.join(OBJECTIVES)}")
        if (self.queries is None) != (self.truth is None):
            raise ParameterError("give --queries and --truth together (or neither, to tune unsupervised)")
        if self.method != "nnn" and self.truth is None:
            raise ParameterError(f"--method {self.method} tunes supervised only: give --queries and --truth")

    @property
    def supervised(self) -> bool:
        return not self.unsupervised and self.truth is not None


def _tunable(method: str) -> str:
    try:
        name = registry.resolve(method)
    except ParameterError:
        name = ""
    if name not in registry.comparison_names():
        raise ParameterError(f"unknown --method {method!r}; choose nnn, {', '.join(registry.comparison_names())}")
    return name


def _grid(method: str, grid: Optional[Mapping[str, Sequence[float]]]) -> Optional[dict[str, list[float]]]:
    if not grid or method == "nnn":
        return None
    known = set(registry.get(method).params)
    out: dict[str, list[float]] = {}
    for name, values in grid.items():
        if name not in known:
            raise ParameterError(f"--method-grid: {method} has no parameter {name!r}; use {', '.join(sorted(known))}")
        out[name] = [float(v) for v in _numbers(values, f"--method-grid {name}")]
        if any(not math.isfinite(v) or v < 0 for v in out[name]):
            raise ParameterError(f"--method-grid values for {name} must be finite numbers >= 0")
    return out


@dataclass
class TuneJobResult:
    """What ``nnn tune`` chose: the params document (written to ``output``), notes and the NNN grid."""

    document: dict
    output: Path
    message: str
    notes: list[str] = field(default_factory=list)
    grid: Optional[TuneResult] = field(default=None, repr=False)

    @property
    def summary(self) -> dict:
        """The ``--json`` document with the one-line ``message`` (no live objects)."""
        return {**self.document, "message": self.message}

    def to_json(self) -> dict:
        return self.document


def tune(gallery: PathLike, reference: PathLike, output: PathLike, *, progress: ProgressFn | None = None,
         on_note: NoteFn | None = None, **options: Any) -> TuneJobResult:  # fmt: skip
    """Sweep and write params.json (with provenance); ``options`` are :class:`TuneRequest`'s fields."""
    return run_tune(TuneRequest(gallery, reference, output, **options), progress, on_note)


@dataclass
class _Opened:
    g_src: Any
    r_src: Any
    q_src: Any = None
    gb_src: Any = None
    truth: Any = None
    protocol: dict = field(default_factory=dict)


def _open(req: TuneRequest, notes: Notes) -> _Opened:
    inputs = [req.gallery, req.reference, req.queries, req.truth, req.gallery_bank]
    check_output_path(req.output, inputs, None, "params output")
    if req.plot is not None:
        check_output_path(req.plot, [*inputs[:4], req.output], (".png",), "--plot")
    src = _Opened(open_embeddings(req.gallery, "gallery"), open_embeddings(req.reference, "reference"))
    if req.queries is not None:
        src.q_src = open_embeddings(req.queries, "queries")
    if req.gallery_bank is not None:
        src.gb_src = open_embeddings(req.gallery_bank, "gallery bank")
    check_same_dim(*(s for s in (src.q_src, src.g_src, src.r_src, src.gb_src) if s is not None))
    src.r_src, src.protocol = apply_fraction(src.r_src, req.reference_fraction, req.seed, notes)
    if req.method == "nnn":
        n_bias = len(split_reference(src.r_src.n, req.holdout)[0]) if not req.supervised else src.r_src.n
        check_grid(list(req.alphas), list(req.ks), n_bias)
    if req.truth is not None:
        src.truth = read_truth(req.truth, src.q_src.n, src.g_src.n, src.q_src.ids(), src.g_src.ids())
    return src


def run_tune(req: TuneRequest, progress: ProgressFn | None = None, on_note: NoteFn | None = None) -> TuneJobResult:
    """Open and check every input, check for leaks, sweep, write the params file."""
    notes = Notes(on_note)
    src = _open(req, notes)
    setup_threads(req.threads)
    g, r = src.g_src.read(req.metric), src.r_src.read(req.metric)
    q = src.q_src.read(req.metric) if src.q_src is not None else None
    if q is not None:
        leak = leak_check(q, src.q_src.ids(), r, src.r_src.ids(), "tuning queries", req.strict, notes)
        src.protocol["leak"] = leak.to_dict()
    roles = {"queries": src.q_src, "gallery": src.g_src, "reference": src.r_src, "gallery_bank": src.gb_src}
    provenance = run_provenance(roles)
    if req.method != "nnn":
        return _tune_method(req, src, q, g, r, provenance, progress, notes)
    return _tune_nnn(req, src, q, g, r, provenance, progress, notes)


def _tune_method(req: TuneRequest, src: _Opened, q, g, r, provenance, progress, notes: Notes) -> TuneJobResult:
    start = time.perf_counter()
    gallery_bank = src.gb_src.read(req.metric) if src.gb_src is not None else None
    data = registry.MethodData(q, g, r, gallery_bank)
    entry = registry.get(req.method)
    doc = registry.run_sweep(
        entry, data, src.truth, req.method_grid, progress, dense=req.db_dense, activation_k=req.activation_k
    )
    for warning in doc.get("warnings", []):
        notes(f"warning: {warning}")
    doc.update(
        {
            "metric": req.metric,
            "seconds": round(time.perf_counter() - start, 3),
            "gallery_bank": str(req.gallery_bank) if req.gallery_bank else "gallery",
            "provenance": provenance,
            **src.protocol,
        }
    )
    write_json(req.output, doc)
    flags = " ".join(f"--{n.replace('_', '-')} {v:g}" for n, v in doc["best"].items())
    message = (
        f"wrote {req.output}; use it with `nnn eval --methods {req.method} --method-params {req.output}` ({flags})"
    )
    return TuneJobResult(doc, Path(req.output), message, notes.lines)


def _tune_nnn(req: TuneRequest, src: _Opened, q, g, r, provenance, progress, notes: Notes) -> TuneJobResult:
    alphas, ks = list(req.alphas), list(req.ks)
    if not req.supervised:
        result = tune_unsupervised(
            g, r, alphas, ks, holdout=req.holdout, tolerance=req.tolerance, queries=q, truth=src.truth,
            progress=progress,
        )  # fmt: skip
    else:
        result = tune_grid(q, g, r, src.truth, alphas, ks, objective=req.objective, progress=progress)
    doc = {**result.to_dict(), "metric": req.metric, **src.protocol, "provenance": provenance}
    write_json(req.output, doc)
    for note in result.notes:
        notes(f"note: {note}")
    if req.plot is not None:
        _plot(result, req.plot)
        notes(f"wrote {req.plot}")
    message = (
        f"wrote {req.output}: alpha={result.alpha}, k={result.k} ({result.mode}, {len(result.grid)} "
        f"cells in {result.seconds:.2f}s); use it with `nnn bias --params {req.output}`"
    )
    return TuneJobResult(doc, Path(req.output), message, notes.lines, result)


def _plot(result: TuneResult, plot: PathLike) -> None:
    from nnn_cli.report.plots import plot_tune_grid

    key = result.objective
    best = (result.alpha, result.k)
    title = f"nnn tune ({result.mode}): {key}"
    plot_tune_grid(result.alphas, result.ks, result.matrix(key), Path(plot), metric=key, best=best, title=title)
