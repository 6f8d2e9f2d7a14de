"""Pictures of hubness and of a tuning sweep, as PNG files (matplotlib, Agg backend).

Functions take plain arrays and dicts so any command (eval, tune) can call
them.  matplotlib is the optional extra ``plots``: ``pip install '.[plots]'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnn_cli.errors import DependencyError, ParameterError


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or a DependencyError saying what to install."""
    try:
        import matplotlib
    except ImportError:
        raise DependencyError(
            "plots need matplotlib: pip install 'nnn-cli[plots]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def label_decimals(values, min_digits: int = 1, max_digits: int = 4) -> int:
    """The fewest decimals (at least ``min_digits``) that keep distinct values distinct as labels.

    82.55 and 82.45 need 2 (with 1 both read 82.5); 40.0 and 30.0 keep 1.
    """
    vals = sorted({float(v) for v in np.asarray(values, dtype=np.float64).ravel() if np.isfinite(v)})
    for digits in range(min_digits, max_digits + 1):
        labels = {f"{v:.{digits}f}" for v in vals}
        if len(labels) == len(vals):
            return digits
    return max_digits


def _save(fig, path: str | os.PathLike) -> Path:
    from nnn_cli.data.outputs import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_hubness(counts: Mapping[str, np.ndarray], path: str | Path, title: str | None = None) -> Path:
    """Histogram of queries retrieved (at rank 1) per gallery item, one series per method, log-scale y.

    ``counts`` maps a label (e.g. "baseline", "NNN") to an (N,) integer array
    from :func:`nnn_cli.core.metrics.retrieval_counts`.  Like the paper's Figure 2:
    hubs show up as a long right tail, which NNN should shorten.
    """
    if not counts:
        raise ParameterError("plot_hubness needs at least one series of counts")
    plt = pyplot()
    arrays = {label: np.asarray(c, dtype=np.int64) for label, c in counts.items()}
    top = max(int(a.max()) for a in arrays.values())
    bins = np.arange(0, top + 2) - 0.5 if top <= 60 else np.linspace(-0.5, top + 0.5, 61)
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for i, (label, a) in enumerate(arrays.items()):
        ax.hist(
            a,
            bins=bins,
            histtype="stepfilled" if i == 0 else "step",
            alpha=0.45 if i == 0 else 1.0,
            linewidth=1.8,
            color=colours[i % len(colours)],
            label=f"{label} (max {int(a.max())}, never retrieved {np.mean(a == 0):.0%})",
        )
    ax.set_yscale("log")
    ax.set_xlabel("queries retrieving the item at rank 1")
    ax.set_ylabel("gallery items (log scale)")
    ax.set_title(title or "Hubness: queries retrieved per gallery item")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3, which="both", axis="y")
    return _save(fig, path)


def plot_recall_bars(results: Mapping[str, Mapping], path: str | Path, key: str = "R@1") -> Path:
    """Bar chart of ``key`` per method, with bootstrap intervals (``key + '_ci'``) when present."""
    if not results:
        raise ParameterError("plot_recall_bars needs at least one method")
    plt = pyplot()
    names = list(results)
    values = np.array([float(results[n][key]) for n in names])
    fig, ax = plt.subplots(figsize=(1.5 * len(names) + 2, 3.8))
    bars = ax.bar(names, values, color="#1f77b4")
    ax.tick_params(axis="x", labelsize=8)
    cis: list[Any] = [results[n].get(f"{key}_ci") for n in names]
    if all(ci is not None for ci in cis):
        err = np.array([[v - ci[0], ci[1] - v] for v, ci in zip(values, cis)]).T
        ax.errorbar(names, values, yerr=np.clip(err, 0, None), fmt="none", ecolor="black", capsize=4)
    digits = label_decimals(values)
    for bar, v in zip(bars, values):
        ax.annotate(
            f"{v:.{digits}f}",
            (bar.get_x() + bar.get_width() / 2, v / 2),
            ha="center",
            va="center",
            fontsize=9,
            color="white",
            fontweight="bold",
        )
    ax.set_ylabel(f"{key} (%)")
    ax.set_title(f"{key} by method")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_gain(
    results: Mapping[str, Mapping],
    path: str | Path,
    key: str = "R@1",
    baseline: str = "baseline",
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Each method's gain over the baseline in ``key`` (percentage points), with its 95% interval.

    ``results`` maps a method to its eval result (``key``, and ``key + '_gain_ci'`` from the
    paired bootstrap when ``--bootstrap`` was used); the baseline entry gives the reference value.
    Horizontal bars from 0 (no change), so small differences are visible; labels carry the
    precision the numbers have (:func:`label_decimals`).
    """
    if baseline not in results:
        raise ParameterError("plot_gain needs the baseline's result")
    names = [m for m in results if m != baseline]
    if not names:
        raise ParameterError("plot_gain needs at least one method besides the baseline")
    labels = dict(labels or {})
    base = float(results[baseline][key])
    gains = np.array([float(results[m].get(f"{key}_gain", float(results[m][key]) - base)) for m in names])
    cis: list[Any] = [results[m].get(f"{key}_gain_ci") for m in names]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(names) + 1.6))
    y = np.arange(len(names))[::-1]
    colours = ["#2ca02c" if g > 0 else "#d62728" if g < 0 else "#7f7f7f" for g in gains]
    ax.barh(y, gains, color=colours, alpha=0.75, height=0.6)
    have_ci = all(ci is not None for ci in cis)
    if have_ci:
        err = np.array([[g - ci[0], ci[1] - g] for g, ci in zip(gains, cis)]).T
        ax.errorbar(gains, y, xerr=np.clip(err, 0, None), fmt="none", ecolor="black", capsize=4, linewidth=1.2)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [labels.get(m, m) for m in names])
    digits = label_decimals(
        np.concatenate([gains, np.ravel([ci for ci in cis if ci is not None])]) if have_ci else gains
    )
    span = max(1e-9, float(np.max(np.abs(np.concatenate([gains, np.ravel(cis)]) if have_ci else gains))))
    for yi, g, ci in zip(y, gains, cis):
        text = f"{g:+.{digits}f}" + (f"  [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]" if ci is not None else "")
        edge = max(g, ci[1]) if ci is not None else g
        ax.annotate(text, (max(edge, 0) + 0.03 * span, yi), va="center", fontsize=8)
    ax.set_xlim(
        min(0.0, float(np.min(np.ravel(cis)) if have_ci else gains.min())) - 0.1 * span,
        max(0.0, float(np.max(np.ravel(cis)) if have_ci else gains.max())) + 0.6 * span,
    )
    ax.set_xlabel(
        f"{key} gain over the baseline ({base:.{label_decimals([base])}f}), percentage points"
        + (" with 95% interval" if have_ci else "")
    )
    ax.set_title(f"{key}: gain over the baseline" + ("" if have_ci else " (run with --bootstrap N for 95% intervals)"))
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_tune_grid(
    alphas: Sequence[float],
    ks: Sequence[int],
    values,
    path: str | os.PathLike,
    metric: str = "R@1",
    best: tuple[float, int] | None = None,
    title: str | None = None,
) -> Path:
    """Heatmap of ``values[i][j]`` (metric at alpha ``alphas[i]``, k ``ks[j]``), best cell outlined.

    ``values`` is any (len(alphas), len(ks)) array-like, e.g. from ``nnn tune``'s
    grid; build it from a list of
    ``{"alpha", "k", metric}`` records.  Cells that were not evaluated are NaN.
    """
    grid = np.asarray(values, dtype=np.float64)
    if grid.shape != (len(alphas), len(ks)):
        raise ParameterError(f"tune grid has shape {grid.shape}, expected ({len(alphas)}, {len(ks)}) for alphas x ks")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(0.7 * len(ks) + 2.5, 0.45 * len(alphas) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("k (reference neighbours)")
    ax.set_ylabel("alpha")
    fig.colorbar(image, ax=ax, label=f"{metric} (%)")
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    if grid.size <= 200:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.1f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if grid[i, j] > mid else "white",
                    )
    if best is not None and best[0] in list(alphas) and best[1] in list(ks):
        i, j = list(alphas).index(best[0]), list(ks).index(best[1])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    ax.set_title(title or f"NNN tuning sweep: {metric}")
    return _save(fig, path)
