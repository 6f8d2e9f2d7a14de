"""`nnn eval`: Recall@1/5/10 and hubness, baseline and NNN (and the paper's comparison methods) side by side.

Typed API: :class:`EvalRequest` (validated once, where it is built) -> :func:`run_evaluate` ->
:class:`EvalResult`, whose :meth:`~EvalResult.to_json` is the ``nnn eval --json`` document.
:func:`evaluate` builds the request from keyword arguments (the README's calls).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nnn_cli.core import methods as registry
from nnn_cli.core.baselines import BaselineParams
from nnn_cli.core.compare import MethodRun, compare_methods
from nnn_cli.core.nnn import check_alpha
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.provenance import bias_source_attrs, run_provenance
from nnn_cli.data.tables import read_method_params, read_params, read_truth
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import (
    IdsColumns,
    NoteFn,
    Notes,
    PathLike,
    ProgressFn,
    check_reference_k,
    note_backend_mismatch,
    open_source,
    read_checked_bias,
    setup_threads,
)
from nnn_cli.jobs.protocol import apply_fraction, check_fraction, fraction_from_params, leak_check, leak_check_from_bias
from nnn_cli.report.html import METHOD_LABELS

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "BaselineParams",
    "EvalRequest",
    "EvalResult",
    "evaluate",
    "run_evaluate",
    "eval_pictures",
    "method_names",
    "method_defaults",
    "tunable_methods",
]

METHODS = ("baseline", "nnn", "dn", "qbnorm", "is", "dbnorm", "dbnorm_dis")
"""The built-in method names (the registry, :func:`method_names`, also lists methods registered later)."""


def method_names() -> tuple[str, ...]:
    """Every method ``--methods`` accepts now (the registry's names)."""
    return registry.names()


def method_defaults() -> dict[str, float]:
    """Every registered parameter's default value, by name (the CLI's flag defaults)."""
    out: dict[str, float] = {}
    for name in registry.names():
        out.update(registry.get(name).params)
    return out


def tunable_methods() -> tuple[str, ...]:
    """Every method ``nnn tune --method`` accepts now: nnn and the registry's comparison methods."""
    return ("nnn", *registry.comparison_names())


def parse_methods(items: str | Sequence[str]) -> tuple[str, ...]:
    """Method names (a list, or a comma string) checked against the registry, aliases resolved."""
    return registry.parse_methods(items)


@dataclass(frozen=True)
class EvalRequest:
    """Everything ``nnn eval`` needs, validated when built (paths are checked when the job opens them)."""

    queries: PathLike
    gallery: PathLike
    truth: PathLike
    bias: Optional[PathLike] = None
    reference: Optional[PathLike] = None
    alpha: Optional[float] = None
    k: Optional[int] = None
    params: Optional[PathLike] = None
    metric: str = "cosine"
    threads: int = 0
    force: bool = False
    methods: tuple[str, ...] = ("baseline", "nnn")
    method_params: tuple[PathLike, ...] = ()
    baseline_params: BaselineParams | Mapping[str, float] = field(default_factory=BaselineParams)
    gallery_bank: Optional[PathLike] = None
    bootstrap: int = 0
    seed: int = 0
    plots: Optional[PathLike] = None
    report: Optional[PathLike] = None
    query_ids: Optional[PathLike] = None
    gallery_ids: Optional[PathLike] = None
    ids_column: Optional[str] | IdsColumns = None  # --ids-column, or per input (IdsColumns)
    reference_fraction: Optional[float] = None
    reference_seed: Optional[int] = None
    strict: bool = False

    def __post_init__(self) -> None:
        methods = tuple(dict.fromkeys(("baseline", *parse_methods(self.methods))))
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "method_params", tuple(self.method_params or ()))
        if self.alpha is not None:
            object.__setattr__(self, "alpha", check_alpha(self.alpha))
        self._check_sources()
        if self.bootstrap < 0:
            raise ParameterError(f"--bootstrap must be >= 0 resamples, got {self.bootstrap}")
        check_fraction(self.reference_fraction)
        if self.reference_fraction is not None and self.reference is None:
            raise ParameterError("--reference-fraction needs --reference (a bias file records the share it used)")

    @property
    def wants_nnn(self) -> bool:
        return "nnn" in self.methods

    @property
    def bank_methods(self) -> list[str]:
        return [m for m in self.methods if registry.get(m).rank is not None]

    def _check_sources(self) -> None:
        if self.bias is not None and (self.params is not None or self.alpha is not None or self.k is not None):
            raise ParameterError(
                "--bias already fixes alpha and k (they are recorded in it): drop --params/--alpha/--k, "
                "or drop --bias to compute NNN from --reference"
            )
        either = "give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)"
        if self.wants_nnn and self.bias is None and self.reference is None:
            raise ParameterError(either)
        if self.bias is not None and self.reference is not None and not self.bank_methods:
            raise ParameterError(either)
        if self.bank_methods and self.reference is None:
            raise ParameterError(f"methods {', '.join(self.bank_methods)} need --reference (their query bank)")
        if self.gallery_bank is not None and not any(registry.get(m).uses_gallery_bank for m in self.methods):
            users = [m for m in registry.names() if registry.get(m).uses_gallery_bank]
            raise ParameterError(f"--gallery-bank is used only by --methods {', '.join(users)}")


@dataclass
class EvalResult:
    """What ``nnn eval`` measured: the ``--json`` document, the report written, notes, and each ranking."""

    document: dict
    output: Optional[Path] = None
    notes: list[str] = field(default_factory=list)
    runs: dict[str, MethodRun] = field(default_factory=dict, repr=False)

    @property
    def summary(self) -> dict:
        """The ``--json`` document (kept for the README's ``r.summary["nnn"]["R@1"]``)."""
        return self.document

    def to_json(self) -> dict:
        return self.document

    def recall(self, method: str, at: int = 1) -> float:
        return float(self.document[method][f"R@{at}"])


def evaluate(queries: PathLike, gallery: PathLike, truth: PathLike, *, progress: ProgressFn | None = None,
             on_note: NoteFn | None = None, **options: Any) -> EvalResult:  # fmt: skip
    """Evaluate every requested method; ``options`` are :class:`EvalRequest`'s fields."""
    methods = options.pop("methods", ("baseline", "nnn"))
    return run_evaluate(EvalRequest(queries, gallery, truth, methods=methods, **options), progress, on_note)


@dataclass
class _Inputs:
    q_src: Any
    g_src: Any
    r_src: Any = None
    gb_src: Any = None
    truth: Any = None
    alpha: Optional[float] = None
    k: Optional[int] = None
    protocol: dict = field(default_factory=dict)


def _open(req: EvalRequest, notes: Notes) -> _Inputs:
    if req.plots is not None:
        check_plots_folder(req.plots)
    if req.report is not None:
        inputs = [req.queries, req.gallery, req.truth, req.bias, req.reference]
        check_output_path(req.report, inputs, (".html", ".htm"), "--report")
    src = _Inputs(
        open_source(req.queries, "queries", notes, req.query_ids, req.ids_column),
        open_source(req.gallery, "gallery", notes, req.gallery_ids, req.ids_column),
    )
    if req.gallery_bank is not None:
        src.gb_src = open_embeddings(req.gallery_bank, "gallery bank")
    if req.reference is not None:
        src.r_src = open_embeddings(req.reference, "reference")
    check_same_dim(*(s for s in (src.q_src, src.g_src, src.gb_src, src.r_src) if s is not None))
    note_backend_mismatch(notes, src.q_src, src.g_src, src.r_src)
    _nnn_settings(req, src, notes)
    src.truth = read_truth(req.truth, src.q_src.n, src.g_src.n, src.q_src.ids(), src.g_src.ids())
    return src


def _nnn_settings(req: EvalRequest, src: _Inputs, notes: Notes) -> None:
    """alpha, k and the reference share: from the options or the params file, applied consistently."""
    doc = read_params(req.params) if req.params is not None else None
    if src.r_src is not None:
        fraction, seed = fraction_from_params(req.reference_fraction, req.reference_seed, doc, str(req.params))
        src.r_src, src.protocol = apply_fraction(src.r_src, fraction, seed, notes)
    if not req.wants_nnn or req.bias is not None:
        return
    if doc is not None:
        if req.alpha is not None or req.k is not None:
            raise ParameterError("give either --params or --alpha/--k, not both")
        src.alpha, src.k = check_alpha(doc["alpha"]), doc["k"]
    elif req.alpha is None or req.k is None:
        raise ParameterError("give --alpha and --k (or --params PARAMS.json from `nnn tune`)")
    else:
        src.alpha, src.k = req.alpha, req.k
    if src.r_src is not None:
        check_reference_k(src.k, src.r_src, req.params)


def run_evaluate(req: EvalRequest, progress: ProgressFn | None = None, on_note: NoteFn | None = None) -> EvalResult:
    """Open and check every input, run every method on the same data, and return the measurements."""
    notes = Notes(on_note)
    tuned = read_method_params(req.method_params)
    src = _open(req, notes)
    setup_threads(req.threads)
    q, g = src.q_src.read(req.metric), src.g_src.read(req.metric)
    bf = read_checked_bias(req.bias, src.g_src, req.metric, req.force) if req.bias is not None else None
    ref = src.r_src.read(req.metric) if src.r_src is not None else None
    warning = registry.gallery_bank_warning(req.methods, req.gallery_bank)
    if warning:
        notes(f"warning: {warning}")
    leak = _leak(req, src, q, ref, notes)
    runs = compare_methods(
        q, g, src.truth, req.methods, reference=ref, bias=bf.bias if bf is not None else None,
        nnn_alpha=src.alpha, nnn_k=src.k, params=req.baseline_params, method_params=tuned,
        gallery_bank=src.gb_src.read(req.metric) if src.gb_src is not None else None,
        bootstrap=req.bootstrap, seed=req.seed, progress=progress,
    )  # fmt: skip
    doc = _document(req, src, runs, bf, leak)
    if req.plots is not None or req.report is not None:
        doc["pictures"] = eval_pictures(runs, doc, req.plots, req.report, src.g_src.n, notes)
    return EvalResult(doc, Path(req.report) if req.report is not None else None, notes.lines, runs)


def _leak(req: EvalRequest, src: _Inputs, q, ref, notes: Notes):
    """Exact against the reference when it is here; else against the sketch the bias file records."""
    if ref is not None:
        r_ids = src.r_src.ids()
        return leak_check(q, src.q_src.ids(), ref, r_ids, "test queries", req.strict, notes)
    if req.bias is not None and req.wants_nnn:
        return leak_check_from_bias(req.bias, q, src.q_src.ids(), req.strict, notes)
    return None


def _document(req: EvalRequest, src: _Inputs, runs: Mapping[str, MethodRun], bf, leak) -> dict:
    doc: dict = {name: run.result.to_dict() for name, run in runs.items()}
    if bf is not None:
        params_used = {key: bf.attrs[key] for key in ("alpha", "k") if key in bf.attrs}
    else:
        params_used = {"alpha": src.alpha, "k": src.k} if req.wants_nnn else {}
    doc.update(
        {
            "params": params_used,
            "metric": req.metric,
            "n_queries": src.q_src.n,
            "n_queries_with_truth": int(src.truth.has_truth().sum()),
            "n_gallery": src.g_src.n,
        }
    )
    if req.bank_methods:
        doc["gallery_bank"] = src.gb_src.name if src.gb_src is not None else "gallery"
    sources = {"queries": src.q_src, "gallery": src.g_src, "reference": src.r_src, "gallery_bank": src.gb_src}
    bias_attrs = bias_source_attrs(bf.attrs, bf.bias, str(req.bias)) if bf is not None else None
    doc["provenance"] = run_provenance(sources, bias_attrs)
    doc.update(src.protocol)
    if leak is not None:
        doc["leak"] = leak.to_dict()
    if req.bootstrap:
        doc.update({"bootstrap": req.bootstrap, "seed": req.seed})
    return doc


def check_plots_folder(plots: Optional[PathLike]) -> None:
    if plots is None:
        return
    plots = Path(plots)
    if plots.exists() and not plots.is_dir():
        raise ParameterError(f"{plots}: --plots must be a folder")
    parent = plots.parent if str(plots.parent) else Path(".")
    if not plots.exists() and not parent.is_dir():
        raise ParameterError(f"{plots}: --plots folder's parent {parent} does not exist")


def eval_pictures(
    runs, result: dict, plots: Optional[PathLike], report: Optional[PathLike], n_gallery: int, notes: Notes
) -> list[str]:
    """Write the eval PNGs (into ``plots``, or a temporary folder) and the ``report`` page; return PNG paths kept.
    Without matplotlib: no pictures and no empty ``plots`` folder, a tables-only report, and one note."""
    from nnn_cli.report.html import write_report
    from nnn_cli.report.pictures import eval_pictures as draw
    from nnn_cli.report.pictures import plots_unavailable

    missing = plots_unavailable()
    with tempfile.TemporaryDirectory(prefix="nnn-plots-") as tmp:
        note: str | None
        if missing is not None:
            pics_images, note = {}, missing
        else:
            folder = Path(plots) if plots is not None else Path(tmp)
            pics = draw(result, {m: run.topk[:, 0] for m, run in runs.items()}, n_gallery, folder)
            pics_images, note = pics.images, pics.note
        if note:
            notes(f"note: {note}")
        if report is not None:
            write_report(Path(report), result, pics_images, note=note)
            notes(f"wrote {report}")
        return [str(p) for p in pics_images.values()] if plots is not None else []
