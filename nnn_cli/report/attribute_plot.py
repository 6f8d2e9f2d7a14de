"""The paper's Figure 3: attribute bias of each query group (e.g. occupation), before and after NNN."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nnn_cli.errors import ParameterError
from nnn_cli.report.plots import _save, pyplot


def plot_attribute_groups(result: Mapping, path: str | os.PathLike) -> Path:
    """One panel per n: each group's bias (#a - #b)/n as a dot, baseline and NNN side by side, lines
    joining a group's two values, the mean over groups marked.  ``result`` is `nnn attribute-bias --json`
    with ``--query-groups`` (``at[n][method]["per_group"]``)."""
    panels = [(n, rec) for n, rec in result.get("at", {}).items() if "per_group" in rec.get("baseline", {})]
    if not panels:
        raise ParameterError("the per-group picture needs --query-groups (biases per group of queries)")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (n, rec) in zip(axes[0], panels):
        names = sorted(rec["baseline"]["per_group"])
        before = np.array([rec["baseline"]["per_group"][g] for g in names], dtype=float)
        after = np.array([rec["nnn"]["per_group"].get(g, np.nan) for g in names], dtype=float)
        jitter = np.linspace(-0.12, 0.12, num=len(names)) if len(names) > 1 else np.zeros(1)
        for b, a, j in zip(before, after, jitter):
            ax.plot([0 + j, 1 + j], [b, a], color="0.8", linewidth=0.8, zorder=1)
        ax.scatter(jitter, before, color="#c44e52", s=18, zorder=2, label="baseline")
        ax.scatter(1 + jitter, after, color="#4c72b0", s=18, zorder=2, label="NNN")
        for x, key, colour in ((0, "baseline", "#c44e52"), (1, "nnn", "#4c72b0")):
            ax.hlines(rec[key]["bias"], x - 0.3, x + 0.3, colors=colour, linewidth=2.5, zorder=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks([0, 1], ["baseline", "NNN"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_title(f"top {n}: {len(names)} groups (bar = mean)")
    axes[0][0].set_ylabel(f"bias (#{result.get('group_a', 'a')} - #{result.get('group_b', 'b')}) / n")
    fig.suptitle("Attribute bias per query group, before and after NNN")
    return _save(fig, path)
