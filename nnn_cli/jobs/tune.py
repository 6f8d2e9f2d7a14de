"""`nnn tune`: choose alpha and k (or a comparison method's settings) by sweeping a grid; writes params.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from nnn_cli.core.baseline_sweep import parse_grid, tune_baseline
from nnn_cli.core.baselines import DEFAULT_GRIDS, DENSE_MODES, METHOD_ALIASES
from nnn_cli.core.nnn import check_alpha
from nnn_cli.core.protocol import leak_check, reference_subsample
from nnn_cli.core.tune import OBJECTIVES, check_grid, parse_list, split_reference, tune_grid, tune_unsupervised
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.outputs import check_output_path, write_json
from nnn_cli.data.provenance import run_provenance
from nnn_cli.data.tables import read_truth
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import JobResult, NoteFn, Notes, PathLike, ProgressFn, setup_threads

PAPER_ALPHAS_TEXT = "0.25,0.375,0.5,0.625,0.75,0.875,1,1.125,1.25,1.375,1.5"
PAPER_KS_TEXT = "1,2,4,8,16,32,64,128,256,512"


def tune(
    gallery: PathLike,
    reference: PathLike,
    output: PathLike,
    *,
    queries: Optional[PathLike] = None,
    truth: Optional[PathLike] = None,
    alphas: str = PAPER_ALPHAS_TEXT,
    ks: str = PAPER_KS_TEXT,
    objective: str = "R@1",
    unsupervised: bool = False,
    holdout: float = 0.2,
    tolerance: float = 0.001,
    metric: str = "cosine",
    threads: int = 0,
    method: str = "nnn",
    method_grid: Optional[str] = None,
    gallery_bank: Optional[PathLike] = None,
    plot: Optional[PathLike] = None,
    db_dense: str = "around",
    activation_k: int = 1,
    reference_fraction: float = 1.0,
    seed: int = 0,
    strict: bool = False,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """Sweep and write params.json (with provenance); ``summary`` is that document,
    ``summary["_result"]`` the :class:`~nnn_cli.core.tune.TuneResult` (NNN only)."""
    notes = Notes(on_note)
    method = METHOD_ALIASES.get(method, method)
    if method != "nnn" and method not in DEFAULT_GRIDS:
        raise ParameterError(f"unknown --method {method!r}; choose nnn, {', '.join(DEFAULT_GRIDS)}")
    if db_dense not in DENSE_MODES:
        raise ParameterError(f"unknown --db-dense {db_dense!r}: use {', '.join(DENSE_MODES)}")
    if activation_k < 1:
        raise ParameterError(f"--activation-k must be >= 1, got {activation_k}")
    if not 0 < reference_fraction <= 1:
        raise ParameterError(f"--reference-fraction must be in (0, 1], got {reference_fraction}")
    if objective not in OBJECTIVES:
        raise ParameterError(f"unknown --objective {objective!r}: use {', '.join(OBJECTIVES)}")
    alpha_list = parse_list(alphas, "alpha")
    k_list = parse_list(ks, "k")
    for a in alpha_list:
        check_alpha(a)
    grid = parse_grid(method_grid) if method != "nnn" and method_grid else None
    mode_unsupervised = unsupervised or truth is None
    if (queries is None) != (truth is None):
        raise ParameterError("give --queries and --truth together (or neither, to tune unsupervised)")
    if method != "nnn" and truth is None:
        raise ParameterError(f"--method {method} tunes supervised only: give --queries and --truth")
    check_output_path(output, [gallery, reference, queries, truth, gallery_bank], None, "params output")
    if plot is not None:
        check_output_path(plot, [gallery, reference, queries, truth, output], (".png",), "--plot")
    g_src = open_embeddings(gallery, "gallery")
    r_src = open_embeddings(reference, "reference")
    q_src = open_embeddings(queries, "queries") if queries is not None else None
    gb_src = open_embeddings(gallery_bank, "gallery bank") if gallery_bank is not None else None
    check_same_dim(*(s for s in (q_src, g_src, r_src, gb_src) if s is not None))
    n_reference = len(reference_subsample(r_src.n, reference_fraction, seed)) if reference_fraction < 1 else r_src.n
    if method == "nnn":
        n_bias_rows = len(split_reference(n_reference, holdout)[0]) if mode_unsupervised else n_reference
        check_grid(alpha_list, k_list, n_bias_rows)
    tr = (
        read_truth(truth, q_src.n, g_src.n, q_src.ids(), g_src.ids())
        if truth is not None and q_src is not None
        else None
    )
    setup_threads(threads)

    g = g_src.read(metric)
    r = r_src.read(metric)
    q = q_src.read(metric) if q_src is not None else None
    provenance = run_provenance({"queries": q_src, "gallery": g_src, "reference": r_src, "gallery_bank": gb_src})
    protocol: dict = {}
    if reference_fraction < 1:
        r = r[reference_subsample(len(r), reference_fraction, seed)]
        protocol.update({"reference_fraction": reference_fraction, "seed": seed, "n_reference_used": len(r)})
        notes(
            f"note: using {len(r)} of {r_src.n} reference queries (--reference-fraction {reference_fraction:g}, "
            f"--seed {seed})"
        )
    if q is not None:
        leak = leak_check(q, r, strict=strict)
        if leak["warning"]:
            notes(f"warning: {leak['warning']}")
        protocol["leak"] = {key: value for key, value in leak.items() if key != "warning"}
    if method != "nnn":
        assert q is not None  # supervised only (checked above)
        start = time.perf_counter()
        doc = tune_baseline(
            method,
            q,
            g,
            tr,
            r,
            grid,
            gallery_bank=gb_src.read(metric) if gb_src else None,
            progress=progress,
            dense=db_dense,
            activation_k=activation_k,
        )
        for warning in doc.get("warnings", []):
            notes(f"warning: {warning}")
        doc.update(
            {
                "metric": metric,
                "seconds": round(time.perf_counter() - start, 3),
                "gallery_bank": str(gallery_bank) if gallery_bank else "gallery",
                "provenance": provenance,
                **protocol,
            }
        )
        write_json(output, doc)
        flags = " ".join(f"--{n.replace('_', '-')} {v:g}" for n, v in doc["best"].items())
        doc["message"] = f"wrote {output}; use it with `nnn eval --methods {method} --method-params {output}` ({flags})"
        return JobResult(doc, Path(output), notes.lines)
    if mode_unsupervised:
        result = tune_unsupervised(
            g, r, alpha_list, k_list, holdout=holdout, tolerance=tolerance, queries=q, truth=tr, progress=progress
        )
    else:
        assert q is not None and tr is not None  # supervised: --queries and --truth (checked above)
        result = tune_grid(q, g, r, tr, alpha_list, k_list, objective=objective, progress=progress)
    doc = result.to_dict()
    doc["metric"] = metric
    doc.update(protocol)
    doc["provenance"] = provenance
    write_json(output, doc)
    for note in result.notes:
        notes(f"note: {note}")
    if plot is not None:
        from nnn_cli.report.plots import plot_tune_grid

        key = result.objective
        plot_tune_grid(
            result.alphas,
            result.ks,
            result.matrix(key),
            plot,
            metric=key,
            best=(result.alpha, result.k),
            title=f"nnn tune ({result.mode}): {key}",
        )
        notes(f"wrote {plot}")
    summary = dict(doc)
    summary["message"] = (
        f"wrote {output}: alpha={result.alpha}, k={result.k} ({result.mode}, {len(result.grid)} "
        f"cells in {result.seconds:.2f}s); use it with `nnn bias --params {output}`"
    )
    summary["_result"] = result
    return JobResult(summary, Path(output), notes.lines)
