"""`nnn search`: top-N gallery items per query by the debiased score s(q, r) - b(r).

A typed request (:class:`SearchRequest`, validated once in :meth:`SearchRequest.build`) and result
(:class:`SearchResult`, ``--json`` from :meth:`SearchResult.to_json`); where it runs is decided in
:mod:`nnn_cli.scale.runs`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

from nnn_cli.data import objstore
from nnn_cli.data.inputs import check_same_dim
from nnn_cli.data.manifest import load_bias
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.provenance import base_attrs, bias_source_attrs, check_bias_matches, source_attrs
from nnn_cli.data.results import write_jsonl, write_results
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
    note_backend_mismatch,
    open_source,
    setup_threads,
)
from nnn_cli.scale.runs import check_search_options, search_topk

RESULT_SUFFIXES = (".h5", ".hdf5", ".npz", ".jsonl")
FORMATS = ("h5", "jsonl")


def output_format(output: PathLike, fmt: Optional[str]) -> str:
    """``jsonl`` for ``-`` or a ``.jsonl`` name, else ``h5`` (HDF5/npz by suffix), unless given."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ParameterError(f"unknown --format {fmt!r}: use h5 or jsonl")
        return fmt
    return "jsonl" if str(output) == "-" or str(output).lower().endswith(".jsonl") else "h5"


@dataclass(frozen=True)
class SearchRequest:
    """A validated `nnn search`."""

    queries: str
    gallery: str
    output: str
    bias: Optional[str] = None
    top_k: int = 10
    fmt: str = "h5"
    metric: str = "cosine"
    threads: int = 0
    force: bool = False
    index: IndexOptions = field(default_factory=IndexOptions)
    overfetch: Optional[int] = None
    device: str = "cpu"
    query_ids: Optional[str] = None
    gallery_ids: Optional[str] = None
    ids_columns: IdsColumns = field(default_factory=IdsColumns)  # parquet ids column per input
    engine: EngineOptions = field(default_factory=EngineOptions)

    @classmethod
    def build(cls, queries: PathLike, gallery: PathLike, output: PathLike, **options: Any) -> SearchRequest:
        """Check every value once; the output path before any input is read.  ``ids_column`` (a string:
        ``--ids-column``, or :class:`IdsColumns`) is taken for ``ids_columns``."""
        texts = {key: os.fspath(v) for key, v in options.items() if key in _PATHS and v is not None}
        fmt = output_format(output, options.pop("fmt", None))
        legacy, columns = options.pop("ids_column", None), options.pop("ids_columns", None)
        options["ids_columns"] = IdsColumns.of(legacy if columns is None else columns)
        req = cls(os.fspath(queries), os.fspath(gallery), os.fspath(output), **{**options, **texts, "fmt": fmt})
        check_metric(req.metric)
        req.engine.check()
        check_search_options(req.engine, req.index)
        if req.top_k < 1:
            raise ParameterError(f"--top-k must be >= 1, got {req.top_k}")
        if req.output != "-":
            suffixes = (".jsonl",) if req.fmt == "jsonl" else (".h5", ".hdf5", ".npz")
            check_output_path(req.output, [req.queries, req.gallery, req.bias], suffixes, "results output")
        if req.index.save_index is not None:
            out = None if req.output == "-" else req.output
            check_output_path(req.index.save_index, [req.queries, req.gallery, req.bias, out], None, "--save-index")
        return req


_PATHS = ("bias", "query_ids", "gallery_ids")


@dataclass
class SearchResult:
    """What `nnn search` did; :meth:`to_json` is the ``--json`` document (the same on every engine)."""

    target: str  # the results file as given, or "-"
    format: str
    n_queries: int
    n_gallery: int
    top_k: int
    debiased: bool
    metric: str
    engine: str
    message: str = ""
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        keys = ("format", "n_queries", "n_gallery", "top_k", "debiased", "metric", "engine")
        return {"output": self.target, **{key: getattr(self, key) for key in keys}, **self.details}

    @property
    def summary(self) -> dict:
        return {**self.to_json(), **({"message": self.message} if self.message else {})}

    @property
    def output(self) -> Optional[Path]:
        """The results file (None when written to a stream)."""
        return None if self.target == "-" else Path(self.target)


def search(
    queries: PathLike,
    gallery: PathLike,
    output: PathLike,
    *,
    stream: TextIO | None = None,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
    **options: Any,
) -> SearchResult:
    """Search and write results (HDF5/npz, or JSON lines to a file or, for ``output="-"``, to ``stream``).
    ``options`` are :class:`SearchRequest`'s fields (``bias``, ``top_k``, ``fmt``, ``engine``, ...)."""
    request = SearchRequest.build(queries, gallery, output, **options)
    return run_search(request, stream=stream, progress=progress, on_note=on_note)


def run_search(
    req: SearchRequest,
    *,
    stream: TextIO | None = None,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
) -> SearchResult:
    """Carry out a built :class:`SearchRequest`."""
    if req.output == "-" and stream is None:
        raise ParameterError("output '-' needs a stream to write the JSON lines to")
    notes = Notes(on_note)
    objstore.set_io_timeout(req.engine.io_timeout)
    so = dict(req.engine.storage_options)
    q_src = open_source(req.queries, "queries", notes, req.query_ids, req.ids_columns, so)
    g_src = open_source(req.gallery, "gallery", notes, req.gallery_ids, req.ids_columns, so)
    check_same_dim(q_src, g_src)
    note_backend_mismatch(notes, q_src, g_src)
    bf = load_bias(req.bias, so) if req.bias is not None else None
    if bf is not None and (len(bf.bias) != g_src.n or bf.attrs.get("metric", req.metric) != req.metric):
        check_bias_matches(bf.attrs, len(bf.bias), req.bias, g_src, req.metric, req.force)  # type: ignore[arg-type]
    setup_threads(req.threads)
    scores, idx, info = search_topk(
        q_src, g_src, None if bf is None else bf.bias, req.top_k, req.metric, req.engine, req.index,
        overfetch=req.overfetch, device=req.device, threads=req.threads, progress=progress, note=notes,
    )  # fmt: skip
    if bf is not None:  # made for this gallery (its fingerprint is free once the gallery was read)
        check_bias_matches(bf.attrs, len(bf.bias), req.bias, g_src, req.metric, req.force)  # type: ignore[arg-type]
    result = SearchResult(
        req.output, req.fmt, q_src.n, g_src.n, int(idx.shape[1]), bf is not None, req.metric, info.pop("engine"),
        details=info, notes=notes.lines,
    )  # fmt: skip
    _write(req, result, scores, idx, q_src, g_src, bf, stream)
    return result


def _write(req: SearchRequest, result: SearchResult, scores, idx, q_src, g_src, bf, stream) -> None:
    g_ids = g_src.ids()
    ids = g_ids[idx] if g_ids is not None else None
    if req.fmt == "jsonl":
        write_jsonl(stream if req.output == "-" else req.output, scores, idx, ids, q_src.ids())
        return
    attrs = base_attrs(
        "search", top_k=req.top_k, metric=req.metric, debiased=bf is not None, bias_path=req.bias, engine=result.engine
    )
    attrs.update({**source_attrs("queries", q_src), **source_attrs("gallery", g_src)})
    if bf is not None:
        attrs.update(bias_source_attrs(bf.attrs, bf.bias, str(req.bias)))
    attrs.update({key: v for key, v in result.details.items() if not isinstance(v, dict)})
    write_results(req.output, idx, scores, ids, attrs)
    result.message = (
        f"wrote {req.output}: top-{idx.shape[1]} of {g_src.n} for {q_src.n} queries"
        f" ({'debiased' if bf is not None else 'plain'} scores)"
    )
