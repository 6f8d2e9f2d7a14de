"""`nnn bias`: each gallery item's bias, alpha x mean of its k highest reference-query scores.

One typed request (:class:`BiasRequest`, validated once where it is built), one typed result
(:class:`BiasResult`, its ``--json`` document from :meth:`BiasResult.to_json`).  Three operations: a fresh
bias (a bias file or a run folder, local or by URL), ``append_to`` (new gallery items) and ``update`` with
``reference_add`` (new reference queries).  The paper's protocol (:mod:`nnn_cli.jobs.protocol`): ``queries``
are checked for leaks into the reference (warned, refused with ``strict``); ``reference_fraction`` and
``reference_seed`` pick a seeded share of the reference (params tuned on a share apply it); a bias file records
the sketch of its reference so ``eval --bias`` can check test queries later.  Where the blocks run and where they go is decided in
:mod:`nnn_cli.scale.runs`; this job names no engine and no store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nnn_cli.data import objstore
from nnn_cli.data.inputs import check_same_dim
from nnn_cli.data.locks import DEFAULT_WAIT
from nnn_cli.data.provenance import base_attrs, bias_provenance
from nnn_cli.data.sources import check_metric
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import (
    EngineOptions,
    IdsColumns,
    IndexOptions,
    NoteFn,
    Notes,
    PathLike,
    ProgressFn,
    check_reference_k,
    note_backend_mismatch,
    open_source,
    resolve_params,
    setup_threads,
)
from nnn_cli.jobs.protocol import bias_protocol, queries_leak_check, reference_share, sketch_attrs
from nnn_cli.scale.budget import parse_memory_budget
from nnn_cli.scale.pipeline import BiasParams
from nnn_cli.scale.runs import check_bias_options, compute_bias
from nnn_cli.scale.stores import InPlace, Target, bias_place

BIAS_SUFFIXES = (".h5", ".hdf5", ".npy")


@dataclass(frozen=True)
class BiasRequest:
    """A validated `nnn bias`: build it with :meth:`build` (strings are parsed in the CLI, not here)."""

    gallery: str
    reference: Optional[str]
    output: Optional[str]
    alpha: Optional[float]  # None: taken from the file grown by append_to/update
    k: Optional[int]
    metric: str = "cosine"
    store_topk: bool = True
    append_to: Optional[str] = None
    update: Optional[str] = None
    reference_add: Optional[str] = None
    index: IndexOptions = field(default_factory=IndexOptions)
    memory_budget: Optional[int] = None
    device: str = "cpu"
    threads: int = 0
    wait: float = DEFAULT_WAIT
    gallery_ids: Optional[str] = None
    ids_columns: IdsColumns = field(default_factory=IdsColumns)  # parquet ids column per input
    engine: EngineOptions = field(default_factory=EngineOptions)
    queries: Optional[str] = None  # checked for leaks into the reference
    strict: bool = False  # a leak refuses (exit 2) instead of warning
    leak_sketch: bool = True  # a new bias file records its reference's sketch (for `eval --bias` leak checks)
    reference_fraction: float = 1.0  # resolved with the params' record (jobs.protocol.reference_share)
    reference_seed: int = 0
    params: Optional[str] = None  # the params file alpha and k came from (named in their errors)
    in_place: Optional[InPlace] = None  # the gallery is a store's table, and the biases go back into it

    @property
    def operation(self) -> str:
        if self.append_to is not None:
            return "append"
        return "reference-add" if self.update is not None or self.reference_add is not None else "create"

    @classmethod
    def build(
        cls,
        gallery: PathLike,
        reference: Optional[PathLike] = None,
        output: Optional[PathLike] = None,
        *,
        alpha: Optional[float] = None,
        k: Optional[int] = None,
        params: Optional[PathLike] = None,
        memory_budget: str | int | None = None,
        **options: Any,
    ) -> BiasRequest:
        """Check every value once (alpha, k, metric, engine, combinations) and return the request.
        ``ids_column`` (a string: ``--ids-column``, or :class:`IdsColumns`) is taken for ``ids_columns``."""
        text = {key: _text(v) for key, v in options.items() if key in _PATH_OPTIONS}
        share = reference_share(options.pop("reference_fraction", None), options.pop("reference_seed", None), params)
        legacy, columns = options.pop("ids_column", None), options.pop("ids_columns", None)
        req = cls(
            os.fspath(gallery), _text(reference), _text(output), alpha, k,
            **{**options, **text, "memory_budget": parse_memory_budget(memory_budget)},
            reference_fraction=share[0], reference_seed=share[1],
            ids_columns=IdsColumns.of(legacy if columns is None else columns), params=_text(params),
        )  # fmt: skip
        check_metric(req.metric)
        req.engine.check()
        grow = req.append_to is not None or req.update is not None or req.reference_add is not None
        recorded = grow or (req.in_place is not None and req.in_place.only_new)  # alpha, k: the recorded ones
        if params is not None or not recorded:
            alpha, k = resolve_params(alpha, k, params)
            req = _replace(req, alpha=alpha, k=k)
        (_check_in_place if req.in_place is not None else _check_grow if grow else _check_create)(req)
        check_bias_options(req.engine, req.output, req.index, req.memory_budget)
        return req


def in_place_target(
    table: Optional[str], column: str = "embedding", id_column: Optional[str] = None, *, only_new: bool = False,
    store_options: Optional[dict] = None,
) -> InPlace:  # fmt: skip
    """``--in-place``: the table (and vector column, row key) of the store GALLERY names; ``only_new``: the rows
    without a bias, with the recorded parameters."""
    if not table:
        raise ParameterError("--in-place needs --table NAME (and --column, the vector column)")
    return InPlace(Target(table, column, id_column), only_new, store_options or None)


_PATH_OPTIONS = ("append_to", "update", "reference_add", "gallery_ids", "queries")


def _text(value: Optional[PathLike]) -> Optional[str]:
    """A path or URL as the text the user gave (a URL must never pass through ``pathlib.Path``)."""
    return None if value is None else os.fspath(value)


def _replace(req: BiasRequest, **changes: Any) -> BiasRequest:
    from dataclasses import replace

    return replace(req, **changes)


def _check_create(req: BiasRequest) -> None:
    if req.reference is None or req.output is None:
        raise ParameterError("give --reference R and -o BIAS.h5 or -o RUN_FOLDER (or --append-to / --update)")
    if req.reference_add is not None:
        raise ParameterError("--reference-add goes with --update BIAS")


def _check_in_place(req: BiasRequest) -> None:
    if req.output is not None or req.append_to is not None or req.update is not None:
        raise ParameterError("--in-place writes the store GALLERY names: it takes no -o, --update or --append-to")
    if req.gallery_ids is not None:
        raise ParameterError("--in-place takes the row keys from the table (--id-column): drop --gallery-ids")
    assert req.in_place is not None
    if req.reference_add is not None and (
        req.reference is not None or req.in_place.only_new or req.params or req.alpha is not None or req.k is not None
    ):
        raise ParameterError(
            "--reference-add on a store uses the recorded reference and parameters: drop -r, --only-new, "
            "--alpha/--k/--params"
        )  # fmt: skip
    if req.reference_add is None and req.reference is None:
        raise ParameterError("--in-place needs --reference R (or --reference-add NEW to grow the recorded one)")


def _check_grow(req: BiasRequest) -> None:
    if (req.append_to is None) == (req.update is None):
        raise ParameterError(
            "give either --append-to BIAS (new gallery items) or --update BIAS --reference-add NEW "
            "(new reference queries), not both"
        )
    if req.append_to is not None and (req.reference is None or req.reference_add is not None):
        raise ParameterError("--append-to needs --reference R (the file's reference) and no --reference-add")
    if req.update is not None and (req.reference_add is None or req.reference is not None):
        raise ParameterError("--update needs --reference-add NEW_QUERIES (and no --reference)")
    if not req.index.exact_flat or req.memory_budget is not None:
        raise ParameterError(
            "--append-to/--update compute exactly: drop --index, --load-index, --save-index and --memory-budget"
        )
    if req.engine.resume or req.engine.block_rows is not None or req.engine.partition_rows is not None:
        raise ParameterError("--append-to/--update keep the run's plan: drop --resume, --block-rows, --partition-rows")
    if req.reference_fraction < 1:
        raise ParameterError(
            "--append-to/--update keep the reference the file was made with: drop --reference-fraction "
            "(and params that record a share)"
        )
    if not req.leak_sketch:
        raise ParameterError(
            "--no-leak-sketch applies to a new bias file: --append-to keeps the file's sketch as it is and "
            "--update extends it with the new queries"
        )


@dataclass
class BiasResult:
    """What `nnn bias` did; :meth:`to_json` is the ``--json`` document (the same on every engine)."""

    target: str  # the output as given: a path or a URL
    operation: str
    n_gallery: int
    n_reference: int
    alpha: float
    k: int
    metric: str
    engine: str
    seconds: float
    message: str
    stats: dict = field(default_factory=dict)  # bias_mean/min/max (bias files), n_added, blocks
    details: dict = field(default_factory=dict)  # plan, index, per-task figures
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        head = {"output": self.target, **{key: getattr(self, key) for key in ("operation", "n_gallery", "n_reference")}}
        head.update(alpha=self.alpha, k=self.k, metric=self.metric, engine=self.engine)
        return {**self.details, **head, "seconds": round(float(self.seconds), 3), **self.stats}

    @property
    def summary(self) -> dict:
        """The ``--json`` document plus ``message`` (kept for callers of the earlier dict results)."""
        return {**self.to_json(), "message": self.message}

    @property
    def output(self) -> Path | str:
        """The output: a :class:`~pathlib.Path` for a local file or folder, the URL text for a URL."""
        return self.target if objstore.is_url(self.target) else Path(self.target)


def bias(
    gallery: PathLike,
    reference: Optional[PathLike] = None,
    output: Optional[PathLike] = None,
    *,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
    **options: Any,
) -> BiasResult:
    """Compute a bias (file or run folder), or grow one; returns its typed result.

    ``options`` are :meth:`BiasRequest.build`'s (``alpha``, ``k``, ``params``, ``metric``, ``append_to``,
    ``update``, ``reference_add``, ``index``, ``engine``, ...).  Raises :class:`~nnn_cli.errors.NNNError`
    subclasses on bad input, before any heavy work and before anything is written."""
    return run_bias(BiasRequest.build(gallery, reference, output, **options), progress=progress, on_note=on_note)


def run_bias(request: BiasRequest, *, progress: ProgressFn | None = None, on_note: NoteFn | None = None) -> BiasResult:
    """Carry out a built :class:`BiasRequest`."""
    notes = Notes(on_note)
    objstore.set_io_timeout(request.engine.io_timeout)
    setup_threads(request.threads)
    eng = request.engine
    with bias_place(request.gallery, request.in_place, eng.io_timeout, request.wait, eng.block_rows) as place:
        if request.operation == "create":
            return _create(request, place, progress, notes)
        return _grow(request, place, progress, notes)


def _create(req: BiasRequest, place: Any, progress: ProgressFn | None, notes: Notes) -> BiasResult:
    so = dict(req.engine.storage_options)
    g_src = place.gallery(lambda: open_source(req.gallery, "gallery", notes, req.gallery_ids, req.ids_columns, so))
    r_src = open_source(req.reference, "reference", notes, None, req.ids_columns, so)  # type: ignore[arg-type]
    check_same_dim(g_src, r_src)
    note_backend_mismatch(notes, g_src, r_src)
    sink = place.sink(req.output, [req.gallery, req.reference, req.queries], req.engine, g_src)
    sink.check(req.engine.resume)  # the output checked (and a store reached) before the inputs are read
    proto = bias_protocol(r_src, req.reference_fraction, req.reference_seed, req.queries, req.strict, req.metric,
                          notes, so)  # fmt: skip
    r_src = proto.reference
    alpha, k, metric = place.params(req.alpha, req.k, req.metric, r_src, g_src)
    params = BiasParams(alpha, check_reference_k(k, r_src, req.params), metric, req.store_topk)

    def provenance() -> dict:
        head = base_attrs("bias", alpha=params.alpha, k=params.k, metric=req.metric)
        # the sketch's attributes without making it: provenance runs beside the sketch at commit
        sketch = sketch_attrs(r_src.n) if req.leak_sketch else {}
        return {**head, **bias_provenance(g_src, r_src), **proto.attrs, **sketch}

    datasets = (lambda: proto.sketch()[0]) if req.leak_sketch else None
    outcome = compute_bias(
        g_src, r_src, params, sink, req.engine, req.index, memory_budget=req.memory_budget, device=req.device,
        threads=req.threads, provenance=provenance, datasets=datasets, progress=progress, note=notes,
    )  # fmt: skip
    stats = {**_bias_stats(outcome.bias), **proto.summary, **place.fields(g_src, sink)}
    message = f"wrote {sink.target}: {g_src.n} biases (alpha={params.alpha}, k={params.k}, metric={req.metric}, "
    message += f"{r_src.n} reference queries) in {outcome.seconds:.2f}s" + stats.pop("_text", "")
    return BiasResult(
        sink.target, place.operation_names["create"], g_src.n, r_src.n, params.alpha, params.k, req.metric, outcome.details.pop("engine"),
        outcome.seconds, message, stats, {"dim": g_src.dim, **outcome.details}, notes.lines,
    )  # fmt: skip


def _bias_stats(b: Any) -> dict:
    if b is None:
        return {}
    lo, hi, mean = float(b.min()), float(b.max()), float(b.mean())
    return {
        "bias_mean": mean,
        "bias_min": lo,
        "bias_max": hi,
        "_text": f"; mean {mean:.4f}, range [{lo:.4f}, {hi:.4f}]",
    }


def _grow(req: BiasRequest, place: Any, progress: ProgressFn | None, notes: Notes) -> BiasResult:
    target = req.append_to if req.append_to is not None else req.update if req.update is not None else req.gallery
    leak = _grow_leaks(req, target, notes)
    out = place.grow(
        target, req.gallery, req.reference if req.append_to is not None else req.reference_add, req.operation,
        req.output, req.engine, req.threads, alpha=req.alpha, k=req.k, metric=req.metric, wait=req.wait,
        progress=progress,
    )  # fmt: skip
    what = (
        f"appended {out['n_added']} items" if req.append_to is not None else f"added {out['n_added']} reference queries"
    )
    message = f"wrote {out['output']}: {what}; {out['n_gallery']} biases against {out['n_reference']} reference "
    message += f"queries in {out['seconds']:.2f}s"
    keys = ("n_added", "blocks_added", "blocks_rewritten", "generation", "rows", "bias_mean", "bias_min", "bias_max")
    stats = {key: out[key] for key in keys if key in out}
    stats.update(leak)
    return BiasResult(
        out["output"], req.operation, out["n_gallery"], out["n_reference"], out["alpha"], out["k"], out["metric"],
        out["engine"], out["seconds"], message, stats, {}, notes.lines,
    )  # fmt: skip


def _grow_leaks(req: BiasRequest, target: str, notes: Notes) -> dict:
    """``--queries`` on ``--append-to``/``--update``: checked against the reference this run reads (the file's
    reference, or the new reference queries and the sketch of the file's reference)."""
    if req.queries is None:
        return {}
    so = dict(req.engine.storage_options)
    reference = req.reference if req.append_to is not None else req.reference_add
    r_src = open_source(reference, "reference", notes, None, req.ids_columns, so)  # type: ignore[arg-type]
    stored = None if req.append_to is not None else target
    return queries_leak_check(req.queries, r_src, req.strict, req.metric, notes, so, stored)[0]
