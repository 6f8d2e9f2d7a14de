"""The reference-size ablation as a source: a seeded random share of an embedding input's rows.

``nnn tune``, ``nnn bias`` and ``nnn eval`` take ``--reference-fraction F --seed S`` (the paper's
Tables A12-A15); the same ``F`` and ``S`` pick the same rows of the same file on every command, so
settings tuned on a share are applied to that share.  The rows are read once (one sequential pass
keeping only them) and held in memory; their fingerprint is that of the subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnn_cli.core.protocol import reference_subsample
from nnn_cli.data.sources import EmbeddingSource


@dataclass
class SubsetSource(EmbeddingSource):
    """Rows ``positions`` of another source, held in memory (kind ``mem``), named after it."""

    parent_name: str = ""
    fraction: float = 1.0
    seed: int = 0
    n_parent: int = 0

    @property
    def name(self) -> str:
        return f"{self.parent_name} (--reference-fraction {self.fraction:g}, --seed {self.seed})"


def reference_fraction(src: EmbeddingSource, fraction: float, seed: int = 0) -> EmbeddingSource:
    """``src`` itself when ``fraction`` is 1, else its seeded random share as a :class:`SubsetSource`."""
    positions = reference_subsample(src.n, fraction, seed)
    if len(positions) == src.n:
        return src
    rows = src.take_rows(positions, "ip")  # raw values, checked; each command normalises for its metric
    ids = src.ids()
    return SubsetSource(
        path=src.path, dataset=src.dataset, kind="mem", shape=(len(rows), src.dim), dtype=np.dtype(np.float32),
        label=src.label, _ids=ids[positions] if ids is not None else None, _array=rows,
        parent_name=src.name, fraction=float(fraction), seed=int(seed), n_parent=src.n,
    )  # fmt: skip
