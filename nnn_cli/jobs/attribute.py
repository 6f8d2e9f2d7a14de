"""`nnn attribute-bias`: attribute bias (#a - #b) / n of each query's top n, before and after NNN (paper §3.3).

Typed API: :class:`AttributeRequest` (validated once, where it is built) -> :func:`run_attribute_bias`
-> :class:`AttributeResult`, whose :meth:`~AttributeResult.to_json` is the ``--json`` document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nnn_cli.core.attribute import compare_attribute_bias
from nnn_cli.core.nnn import check_k, compute_bias
from nnn_cli.data.groups import read_query_groups
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.labels import check_explicit_groups, read_labels
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.tables import read_truth
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import NoteFn, Notes, PathLike, ProgressFn, read_checked_bias, resolve_params, setup_threads
from nnn_cli.jobs.protocol import leak_check, leak_check_from_bias


def _ints(values: Any, what: str) -> tuple[int, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ParameterError(f"{what} must be a non-empty list of integers, got {values!r}")
    if any(isinstance(v, bool) or not float(v).is_integer() or int(v) < 1 for v in values):
        raise ParameterError(f"{what} must be integers >= 1, got {list(values)!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class AttributeRequest:
    """Everything ``nnn attribute-bias`` needs, validated when built."""

    queries: PathLike
    gallery: PathLike
    labels: PathLike
    bias: Optional[PathLike] = None
    reference: Optional[PathLike] = None
    alpha: Optional[float] = None
    k: Optional[int] = None
    params: Optional[PathLike] = None
    truth: Optional[PathLike] = None
    ns: Sequence[int] = (6, 10)
    precision_ns: Sequence[int] = (1, 5)
    query_groups: Optional[PathLike] = None
    group_a: Optional[str] = None
    group_b: Optional[str] = None
    metric: str = "cosine"
    threads: int = 0
    force: bool = False
    plot: Optional[PathLike] = None
    strict: bool = False

    def __post_init__(self) -> None:
        if (self.bias is None) == (self.reference is None):
            raise ParameterError("give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)")
        object.__setattr__(self, "ns", _ints(self.ns, "--n"))
        object.__setattr__(self, "precision_ns", _ints(self.precision_ns, "--precision-n"))
        check_explicit_groups(self.labels, self.group_a, self.group_b)
        if self.plot is not None and self.query_groups is None:
            raise ParameterError("--plot draws the per-group distribution: give --query-groups too")


@dataclass
class AttributeResult:
    """The ``--json`` document and the notes given."""

    document: dict
    notes: list[str] = field(default_factory=list)
    output: Any = None

    @property
    def summary(self) -> dict:
        return self.document

    def to_json(self) -> dict:
        return self.document


def attribute_bias(queries: PathLike, gallery: PathLike, labels: PathLike, *, progress: ProgressFn | None = None,
                   on_note: NoteFn | None = None, **options: Any) -> AttributeResult:  # fmt: skip
    """Attribute bias at each n, baseline and NNN; ``options`` are :class:`AttributeRequest`'s fields."""
    return run_attribute_bias(AttributeRequest(queries, gallery, labels, **options), progress, on_note)


def _open(req: AttributeRequest) -> dict:
    if req.plot is not None:
        inputs = [req.queries, req.gallery, req.labels, req.bias, req.reference, req.truth]
        check_output_path(req.plot, inputs, (".png",), "--plot")
    src: dict = {"q": open_embeddings(req.queries, "queries"), "g": open_embeddings(req.gallery, "gallery")}
    check_same_dim(src["q"], src["g"])
    src["r"], src["alpha"], src["k"] = None, None, None
    if req.reference is not None:
        src["alpha"], src["k"] = resolve_params(req.alpha, req.k, req.params)
        src["r"] = open_embeddings(req.reference, "reference")
        check_same_dim(src["q"], src["g"], src["r"])
        check_k(src["k"], src["r"].n)
    q, g = src["q"], src["g"]
    src["labels"] = read_labels(req.labels, g.n, g.ids(), req.group_a, req.group_b)
    src["truth"] = read_truth(req.truth, q.n, g.n, q.ids(), g.ids()) if req.truth is not None else None
    groups = read_query_groups(req.query_groups, q.n, q.ids()) if req.query_groups is not None else (None, None)
    src["groups"], src["group_names"] = groups
    return src


def run_attribute_bias(
    req: AttributeRequest, progress: ProgressFn | None = None, on_note: NoteFn | None = None
) -> AttributeResult:
    """Open and check every input, check for leaks, rank before and after NNN, measure."""
    notes = Notes(on_note)
    src = _open(req)
    setup_threads(req.threads)
    q, g = src["q"].read(req.metric), src["g"].read(req.metric)
    if req.bias is not None:
        b = read_checked_bias(req.bias, src["g"], req.metric, req.force).bias
        leak = leak_check_from_bias(req.bias, q, src["q"].ids(), req.strict, notes, "queries")
    else:
        ref = src["r"].read(req.metric)
        leak = leak_check(q, src["q"].ids(), ref, src["r"].ids(), "queries", req.strict, notes)
        b = compute_bias(g, ref, src["alpha"], src["k"], progress=progress)
    lab, name_a, name_b = src["labels"]
    doc = compare_attribute_bias(q, g, lab, b, list(req.ns), src["truth"], query_groups=src["groups"],
                                 group_names=src["group_names"], precision_ns=list(req.precision_ns))  # fmt: skip
    doc.update({"group_a": name_a, "group_b": name_b, "n_queries": src["q"].n, "n_gallery": src["g"].n})
    doc.update({"metric": req.metric, **({"leak": leak.to_dict()} if leak is not None else {})})
    if req.plot is not None:
        from nnn_cli.report.attribute_plot import plot_attribute_groups

        plot_attribute_groups(doc, Path(req.plot))
        notes(f"wrote {req.plot}")
    return AttributeResult(doc, notes.lines)
