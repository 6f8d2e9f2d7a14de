"""The pictures of an evaluation (``nnn eval --plots/--report``), or a note when they cannot be drawn.

:func:`eval_pictures` draws, from each method's rank-1 retrievals and the eval result:
hubness before/after NNN (the paper's Figure 2), hubness of every method (when more than two),
and each method's Recall@1 gain over the baseline with its 95% interval.  Without matplotlib it
draws nothing and returns a one-line note instead of failing, so the caller can still write a
tables-only report (and should not create an empty ``--plots`` folder: check
:func:`plots_unavailable` first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnn_cli.errors import DependencyError

PICTURES_MISSING = "pictures left out: matplotlib is not installed (pip install 'nnn-cli[plots]')"


@dataclass
class Pictures:
    """Caption -> PNG path of what was drawn, and a note when something was left out."""

    images: dict = field(default_factory=dict)
    note: str | None = None


def plots_unavailable() -> str | None:
    """None when matplotlib can be imported, else the one-line note saying what to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return PICTURES_MISSING
    return None


def eval_pictures(
    result: Mapping, top1: Mapping[str, np.ndarray], n_gallery: int, folder: str | Path, key: str = "R@1"
) -> Pictures:
    """Draw the eval pictures into ``folder`` (created); a :class:`Pictures` with a note without matplotlib.

    ``top1`` maps a method (``baseline``, ``nnn``, ``dn``...) to its (Q,) rank-1 gallery rows;
    ``result`` is the eval result (``result[method][key]``, ``key + '_gain_ci'`` when bootstrapped).
    """
    from nnn_cli.core.metrics import retrieval_counts
    from nnn_cli.report.html import METHOD_LABELS
    from nnn_cli.report.plots import plot_gain, plot_hubness

    note = plots_unavailable()
    if note is not None:
        return Pictures({}, note)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def label(m: str) -> str:
        return METHOD_LABELS.get(m, m)

    shown = [m for m in ("baseline", "nnn") if m in top1] if "nnn" in top1 else list(top1)
    try:
        images = {
            "Queries retrieved (rank 1) per gallery item, before and after": plot_hubness(
                {label(m): retrieval_counts(top1[m], n_gallery) for m in shown}, folder / "hubness.png"
            )
        }
        if len(top1) > 2:
            images["Hubness, every method"] = plot_hubness(
                {label(m): retrieval_counts(t, n_gallery) for m, t in top1.items()},
                folder / "hubness_all.png",
                title="Hubness: every method",
            )
        methods = {m: result[m] for m in top1 if isinstance(result.get(m), Mapping)}
        if "baseline" in methods and len(methods) > 1:
            ci = all(f"{key}_gain_ci" in r for m, r in methods.items() if m != "baseline")
            caption = f"{key} gain over the baseline, percentage points" + (
                " (95% paired bootstrap intervals)" if ci else " (no intervals: run with --bootstrap N)"
            )
            images[caption] = plot_gain(methods, folder / "gain.png", key, labels={m: label(m) for m in methods})
    except DependencyError as exc:  # matplotlib importable but broken (e.g. a missing backend)
        return Pictures({}, f"pictures left out: {exc}")
    return Pictures(images, None)
