"""`nnn search`: top-N gallery items per query by the debiased score s(q, r) - b(r)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, TextIO

from nnn_cli.data.inputs import check_same_dim
from nnn_cli.data.manifest import load_bias
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.provenance import base_attrs, bias_source_attrs, check_bias_matches, source_attrs
from nnn_cli.data.results import write_jsonl, write_results
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import (
    EngineOptions,
    IndexOptions,
    JobResult,
    NoteFn,
    Notes,
    PathLike,
    ProgressFn,
    note_backend_mismatch,
    open_source,
    setup_threads,
)
from nnn_cli.scale.plan import plan_search, run_search_plan

RESULT_SUFFIXES = (".h5", ".hdf5", ".npz", ".jsonl")
FORMATS = ("h5", "jsonl")


def output_format(output: PathLike, fmt: Optional[str]) -> str:
    """``jsonl`` for ``-`` or a ``.jsonl`` name, else ``h5`` (HDF5/npz by suffix), unless given."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ParameterError(f"unknown --format {fmt!r}: use h5 or jsonl")
        return fmt
    return "jsonl" if str(output) == "-" or str(output).lower().endswith(".jsonl") else "h5"


def search(
    queries: PathLike,
    gallery: PathLike,
    output: PathLike,
    *,
    bias: Optional[PathLike] = None,
    top_k: int = 10,
    fmt: Optional[str] = None,
    metric: str = "cosine",
    threads: int = 0,
    force: bool = False,
    index: IndexOptions | None = None,
    overfetch: Optional[int] = None,
    device: str = "cpu",
    stream: TextIO | None = None,
    query_ids: Optional[PathLike] = None,
    gallery_ids: Optional[PathLike] = None,
    ids_column: Optional[str] = None,
    engine: EngineOptions | None = None,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """Search and write results (HDF5/npz, or JSON lines to a file or, for ``output="-"``, to ``stream``)."""
    index = index or IndexOptions()
    engine = (engine or EngineOptions()).check()
    if engine.engine == "ray" and (not index.exact_flat or engine.resume):
        raise ParameterError(
            "--engine ray searches exactly and does not resume: drop --index/--load-index/--save-index and --resume"
        )
    notes = Notes(on_note)
    fmt = output_format(output, fmt)
    to_stream = str(output) == "-"
    if to_stream and stream is None:
        raise ParameterError("output '-' needs a stream to write the JSON lines to")
    if top_k < 1:
        raise ParameterError(f"--top-k must be >= 1, got {top_k}")
    if not to_stream:
        suffixes = (".jsonl",) if fmt == "jsonl" else (".h5", ".hdf5", ".npz")
        check_output_path(output, [queries, gallery, bias], suffixes, "results output")
    if index.save_index is not None:
        check_output_path(
            index.save_index, [queries, gallery, bias, None if to_stream else output], None, "--save-index"
        )
    if engine.engine == "ray":
        scores, idx, search_info, q_ids, g_ids = _search_ray(
            queries, gallery, bias, top_k, metric, force, engine, progress, notes
        )
        b = bf = None
        debiased = bias is not None
        q_src = g_src = None
    else:
        debiased = bias is not None
        q_src = open_source(queries, "queries", notes, query_ids, ids_column)
        g_src = open_source(gallery, "gallery", notes, gallery_ids, ids_column)
        check_same_dim(q_src, g_src)
        note_backend_mismatch(notes, q_src, g_src)
        b = bf = None
        if bias is not None:
            bf = load_bias(bias)
            if len(bf.bias) != g_src.n or bf.attrs.get("metric", metric) != metric:
                check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric, force)
            b = bf.bias
        splan = plan_search(
            q_src.n,
            g_src.n,
            g_src.dim,
            top_k,
            index.index,
            index.nlist,
            index.nprobe,
            index.ef_search,
            index.recall,
            overfetch,
            device,
            index.load_index,
            index.save_index,
        )
        setup_threads(threads)
        for note in splan.notes:
            notes(note)
        if splan.indexed:
            notes(splan.describe())

        q = q_src.read(metric)
        g = g_src.read(metric)
        if bf is not None:  # the fingerprint is free now that the gallery was read
            check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric, force)
        scores, idx, search_info = run_search_plan(
            splan, q, g, b, top_k, g_src.fingerprint(), metric, progress=progress
        )
        if "index_sample_recall" in search_info:
            notes(
                f"index top-{idx.shape[1]} recall (debiased, vs exact) on {search_info['index_sample_rows']} "
                f"sampled queries: {search_info['index_sample_recall']:.3f}"
            )
        if "index_warning" in search_info:
            notes(f"warning: {search_info['index_warning']}")
        q_ids, g_ids = q_src.ids(), g_src.ids()
    ids = g_ids[idx] if g_ids is not None else None
    n_queries, n_gallery = (q_src.n, g_src.n) if q_src is not None else (len(idx), search_info.get("n_gallery"))
    summary = {
        "output": str(output),
        "format": fmt,
        "n_queries": n_queries,
        "n_gallery": n_gallery,
        "top_k": int(idx.shape[1]),
        "debiased": debiased,
        "metric": metric,
        "engine": engine.engine,
        **{key: value for key, value in search_info.items() if key != "index_tuned"},
    }
    if fmt == "jsonl":
        write_jsonl(stream if to_stream else output, scores, idx, ids, q_ids)
        return JobResult(summary, None if to_stream else Path(output), notes.lines)
    attrs = base_attrs(
        "search",
        top_k=top_k,
        metric=metric,
        debiased=debiased,
        bias_path=str(bias) if bias else None,
        engine=engine.engine,
    )
    if q_src is not None:
        attrs.update(source_attrs("queries", q_src))
        attrs.update(source_attrs("gallery", g_src))
    else:
        attrs.update({"queries_path": str(queries), "gallery_path": str(gallery)})
    if b is not None:
        attrs.update(bias_source_attrs(bf.attrs, b, str(bias)))
    attrs.update({key: value for key, value in search_info.items() if key != "index_tuned"})
    write_results(output, idx, scores, ids, attrs)
    summary["message"] = (
        f"wrote {output}: top-{idx.shape[1]} of {n_gallery} for {n_queries} queries"
        f" ({'debiased' if debiased else 'plain'} scores{', --engine ray' if q_src is None else ''})"
    )
    return JobResult(summary, Path(output), notes.lines)


def _search_ray(queries, gallery, bias, top_k, metric, force, engine: EngineOptions, progress, notes: Notes):
    """``--engine ray``: query blocks x gallery partitions as Ray tasks (byte-identical to local).  Ids and the
    stale-bias check need the gallery as a local file; for URLs they are left out (with a note)."""
    from pathlib import Path

    from nnn_cli.data import objstore

    try:
        from nnn_cli.scale.ray import ray_search
    except ImportError as exc:  # pragma: no cover - the optional extra
        from nnn_cli.errors import DependencyError

        raise DependencyError(f"--engine ray needs the ray extra: pip install 'nnn-cli[ray]' ({exc})") from None
    local = not objstore.is_url(str(gallery)) and Path(str(gallery)).exists()
    q_ids = g_ids = None
    g_src = open_source(gallery, "gallery", notes) if local else None
    b = None
    if bias is not None:
        bf = load_bias(bias, engine.storage_options or None)
        b = bf.bias
        if g_src is not None:
            check_bias_matches(bf.attrs, len(bf.bias), str(bias), g_src, metric, force)
    if g_src is not None:
        g_ids = g_src.ids()
        if not objstore.is_url(str(queries)) and Path(str(queries)).exists():
            q_ids = open_source(queries, "queries", notes).ids()
    else:
        notes(
            "note: inputs by URL: results carry row numbers only (no ids), and the bias is not checked "
            "against the gallery's fingerprint"
        )
    scores, idx = ray_search(queries, gallery, b, top_k, metric, progress=progress, **engine.ray_kwargs())
    return scores, idx, {"n_gallery": len(b) if b is not None else None}, q_ids, g_ids
