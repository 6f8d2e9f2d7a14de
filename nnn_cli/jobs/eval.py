"""`nnn eval`: Recall@1/5/10 and hubness, baseline and NNN (and the paper's comparison methods) side by side."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from nnn_cli.core.baselines import BANK_METHODS, METHODS, BaselineParams, gallery_bank_warning, parse_methods
from nnn_cli.core.compare import compare_methods
from nnn_cli.core.nnn import check_k
from nnn_cli.core.protocol import leak_check
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.provenance import bias_source_attrs, run_provenance
from nnn_cli.data.tables import read_method_params, read_truth
from nnn_cli.errors import ParameterError
from nnn_cli.report.html import METHOD_LABELS

__all__ = ["METHODS", "METHOD_LABELS", "BaselineParams", "evaluate", "eval_pictures"]

from nnn_cli.jobs.common import (
    JobResult,
    NoteFn,
    Notes,
    PathLike,
    ProgressFn,
    note_backend_mismatch,
    open_source,
    read_checked_bias,
    resolve_params,
    setup_threads,
)


def check_plots_folder(plots: Optional[PathLike]) -> None:
    if plots is None:
        return
    plots = Path(plots)
    if plots.exists() and not plots.is_dir():
        raise ParameterError(f"{plots}: --plots must be a folder")
    parent = plots.parent if str(plots.parent) else Path(".")
    if not plots.exists() and not parent.is_dir():
        raise ParameterError(f"{plots}: --plots folder's parent {parent} does not exist")


def evaluate(
    queries: PathLike,
    gallery: PathLike,
    truth: PathLike,
    *,
    bias: Optional[PathLike] = None,
    reference: Optional[PathLike] = None,
    alpha: Optional[float] = None,
    k: Optional[int] = None,
    params: Optional[PathLike] = None,
    metric: str = "cosine",
    threads: int = 0,
    force: bool = False,
    methods: str | Sequence[str] = "baseline,nnn",
    method_params: Optional[Sequence[PathLike]] = None,
    baseline_params: BaselineParams | None = None,
    gallery_bank: Optional[PathLike] = None,
    bootstrap: int = 0,
    seed: int = 0,
    plots: Optional[PathLike] = None,
    report: Optional[PathLike] = None,
    query_ids: Optional[PathLike] = None,
    gallery_ids: Optional[PathLike] = None,
    ids_column: Optional[str] = None,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """Evaluate every requested method; ``summary`` is the `nnn eval --json` document."""
    notes = Notes(on_note)
    method_list = tuple(
        dict.fromkeys(("baseline",) + tuple(parse_methods(methods) if isinstance(methods, str) else methods))
    )
    tuned_params = read_method_params(method_params, baseline_params or BaselineParams())
    want_nnn = "nnn" in method_list
    need_bank = any(m in BANK_METHODS for m in method_list)
    if want_nnn and bias is None and reference is None:
        raise ParameterError("give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)")
    if bias is not None and reference is not None and not need_bank:
        raise ParameterError("give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)")
    if need_bank and reference is None:
        raise ParameterError("methods dn, qbnorm, is, dbnorm and dbnorm_dis need --reference (their query bank)")
    if gallery_bank is not None and not need_bank:
        raise ParameterError("--gallery-bank is used only by --methods dn, dbnorm or dbnorm_dis")
    check_plots_folder(plots)
    if report is not None:
        check_output_path(report, [queries, gallery, truth, bias, reference], (".html", ".htm"), "--report")
    q_src = open_source(queries, "queries", notes, query_ids, ids_column)
    g_src = open_source(gallery, "gallery", notes, gallery_ids, ids_column)
    check_same_dim(q_src, g_src)
    r_src = gb_src = None
    if gallery_bank is not None:
        gb_src = open_embeddings(gallery_bank, "gallery bank")
        check_same_dim(q_src, g_src, gb_src)
    if reference is not None:
        r_src = open_embeddings(reference, "reference")
        check_same_dim(q_src, g_src, r_src)
    note_backend_mismatch(notes, q_src, g_src, r_src)
    if want_nnn and bias is None:
        alpha, k = resolve_params(alpha, k, params)
        assert r_src is not None  # NNN without --bias needs --reference (checked above)
        check_k(k, r_src.n)
    tr = read_truth(truth, q_src.n, g_src.n, q_src.ids(), g_src.ids())
    setup_threads(threads)

    q = q_src.read(metric)
    g = g_src.read(metric)
    params_used: dict = {}
    b = bf = None
    if bias is not None and want_nnn:
        bf = read_checked_bias(bias, g_src, metric, force)
        b = bf.bias
        params_used = {key: bf.attrs[key] for key in ("alpha", "k") if key in bf.attrs}
    elif want_nnn:
        params_used = {"alpha": alpha, "k": k}
    ref = r_src.read(metric) if r_src is not None else None
    warning = gallery_bank_warning(method_list, gallery_bank)
    if warning:
        notes(f"warning: {warning}")
    leak = leak_check(q, ref, what="test queries") if ref is not None else None
    if leak and leak.get("warning"):
        notes(f"warning: {leak['warning']}")
    runs = compare_methods(
        q,
        g,
        tr,
        method_list,
        reference=ref,
        bias=b,
        nnn_alpha=alpha,
        nnn_k=k,
        params=tuned_params,
        gallery_bank=gb_src.read(metric) if gb_src is not None else None,
        bootstrap=bootstrap,
        seed=seed,
        progress=progress,
    )
    result: dict = {name: run.result.to_dict() for name, run in runs.items()}
    result.update(
        {
            "params": params_used,
            "metric": metric,
            "n_queries": q_src.n,
            "n_queries_with_truth": int(tr.has_truth().sum()),
            "n_gallery": g_src.n,
        }
    )
    if need_bank:
        result["gallery_bank"] = gb_src.name if gb_src is not None else "gallery"
    result["provenance"] = run_provenance(
        {"queries": q_src, "gallery": g_src, "reference": r_src, "gallery_bank": gb_src},
        bias_source_attrs(bf.attrs, b, str(bias)) if bf is not None else None,
    )
    if leak is not None:
        result["leak"] = {key: value for key, value in leak.items() if key != "warning"}
    if bootstrap:
        result.update({"bootstrap": bootstrap, "seed": seed})
    if plots is not None or report is not None:
        result["pictures"] = eval_pictures(runs, result, plots, report, g_src.n, notes)
    return JobResult(result, Path(report) if report is not None else None, notes.lines)


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
            write_report(report, result, pics_images, note=note)
            notes(f"wrote {report}")
        return [str(p) for p in pics_images.values()] if plots is not None else []
