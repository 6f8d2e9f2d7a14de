"""Synthetic retrieval data with planted hubs, for tests and scale benchmarks.

Gallery items are unit vectors; each query is a noisy copy of its correct
item; a few "hub" items are pulled toward the mean query direction so that
they score high against everything, which is the failure NNN corrects.
Reference queries come from the same distribution as the queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class HubData:
    gallery: np.ndarray  # (N, d) float32, unit rows
    queries: np.ndarray  # (Q, d) float32, unit rows
    reference: np.ndarray  # (M, d) float32, unit rows
    truth: np.ndarray  # (Q,) int64 gallery row of each query
    hubs: np.ndarray  # indices of the planted hubs


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_hub_data(
    n_gallery: int = 500,
    n_queries: int = 1000,
    n_reference: int = 4000,
    dim: int = 64,
    n_hubs: int = 10,
    hub_strength: float = 1.0,
    noise: float = 0.5,
    n_clusters: int = 0,
    seed: int = 0,
) -> HubData:
    """Make gallery/queries/reference/truth with ``n_hubs`` planted hubs (deterministic in ``seed``)."""
    rng = np.random.default_rng(seed)
    if n_clusters:
        centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
        gallery = centres[rng.integers(0, n_clusters, n_gallery)] * 0.8 + rng.standard_normal((n_gallery, dim)).astype(
            np.float32
        )
    else:
        gallery = rng.standard_normal((n_gallery, dim)).astype(np.float32)
    gallery = _unit(gallery)
    common = _unit(rng.standard_normal((1, dim)))[0]
    hubs = rng.choice(n_gallery, size=min(n_hubs, n_gallery), replace=False)
    gallery[hubs] = _unit(gallery[hubs] + hub_strength * 4 * common)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        targets = rng.integers(0, n_gallery, n)
        x = gallery[targets] + noise * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim) * 4
        x = x + hub_strength * common
        return _unit(x), targets.astype(np.int64)

    queries, truth = draw(n_queries)
    reference, _ = draw(n_reference)
    return HubData(gallery, queries, reference, truth, np.sort(hubs))
