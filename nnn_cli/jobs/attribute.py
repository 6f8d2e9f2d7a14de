"""`nnn attribute-bias`: attribute bias (#a - #b) / n of each query's top n, before and after NNN (paper §3.3)."""

from __future__ import annotations

from typing import Optional

from nnn_cli.core.attribute import compare_attribute_bias
from nnn_cli.core.nnn import check_k, compute_bias
from nnn_cli.data.groups import read_query_groups
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.data.labels import check_explicit_groups, read_labels
from nnn_cli.data.outputs import check_output_path
from nnn_cli.data.tables import read_truth
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import (
    JobResult,
    NoteFn,
    Notes,
    PathLike,
    ProgressFn,
    read_checked_bias,
    resolve_params,
    setup_threads,
)


def parse_ns(text: str) -> list[int]:
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ParameterError(f"--n must be a comma list of integers, got {text!r}") from None


def attribute_bias(
    queries: PathLike,
    gallery: PathLike,
    labels: PathLike,
    *,
    bias: Optional[PathLike] = None,
    reference: Optional[PathLike] = None,
    alpha: Optional[float] = None,
    k: Optional[int] = None,
    params: Optional[PathLike] = None,
    truth: Optional[PathLike] = None,
    ns: str = "6,10",
    precision_ns: str = "1,5",
    query_groups: Optional[PathLike] = None,
    group_a: Optional[str] = None,
    group_b: Optional[str] = None,
    metric: str = "cosine",
    threads: int = 0,
    force: bool = False,
    plot: Optional[PathLike] = None,
    progress: ProgressFn | None = None,
    on_note: NoteFn | None = None,
) -> JobResult:
    """Attribute bias at each n, baseline and NNN; ``summary`` is the `--json` document."""
    notes = Notes(on_note)
    if (bias is None) == (reference is None):
        raise ParameterError("give either --bias BIAS.h5 or --reference R with --alpha/--k (or --params)")
    n_list = parse_ns(ns)
    p_list = parse_ns(precision_ns)
    check_explicit_groups(labels, group_a, group_b)
    if plot is not None:
        if query_groups is None:
            raise ParameterError("--plot draws the per-group distribution: give --query-groups too")
        check_output_path(plot, [queries, gallery, labels, bias, reference, truth], (".png",), "--plot")
    q_src = open_embeddings(queries, "queries")
    g_src = open_embeddings(gallery, "gallery")
    check_same_dim(q_src, g_src)
    r_src = None
    if reference is not None:
        alpha, k = resolve_params(alpha, k, params)
        r_src = open_embeddings(reference, "reference")
        check_same_dim(q_src, g_src, r_src)
        check_k(k, r_src.n)
    lab, name_a, name_b = read_labels(labels, g_src.n, g_src.ids(), group_a, group_b)
    tr = read_truth(truth, q_src.n, g_src.n, q_src.ids(), g_src.ids()) if truth is not None else None
    groups, group_names = (
        read_query_groups(query_groups, q_src.n, q_src.ids()) if query_groups is not None else (None, None)
    )
    setup_threads(threads)
    q = q_src.read(metric)
    g = g_src.read(metric)
    if bias is not None:
        b = read_checked_bias(bias, g_src, metric, force).bias
    else:
        assert r_src is not None and alpha is not None and k is not None  # --reference: resolved above
        b = compute_bias(g, r_src.read(metric), alpha, k, progress=progress)
    result = compare_attribute_bias(
        q, g, lab, b, n_list, tr, query_groups=groups, group_names=group_names, precision_ns=p_list
    )
    result.update({"group_a": name_a, "group_b": name_b, "n_queries": q_src.n, "n_gallery": g_src.n, "metric": metric})
    if plot is not None:
        from nnn_cli.report.attribute_plot import plot_attribute_groups

        plot_attribute_groups(result, plot)
        notes(f"wrote {plot}")
    return JobResult(result, None, notes.lines)
