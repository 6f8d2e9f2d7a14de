"""nnn: Nearest Neighbor Normalization (Chowdhury et al., EMNLP 2024) for contrastive retrieval.

Library first: every CLI command calls one job in :mod:`nnn_cli.jobs`, which a
Python user can call too and gets every guarantee the shell gets (validation
before work, provenance, atomic outputs, stale-file checks).

>>> from nnn_cli import jobs
>>> jobs.bias("gallery.h5", reference="reference.h5", output="bias.h5", alpha=0.75, k=16)  # doctest: +SKIP

The array functions are re-exported here lazily (PEP 562), so ``import nnn_cli``
loads nothing heavy:

>>> from nnn_cli import open_embeddings, compute_bias, search
>>> g = open_embeddings("gallery.h5").read("cosine")          # doctest: +SKIP
>>> r = open_embeddings("reference.h5").read("cosine")        # doctest: +SKIP
>>> b = compute_bias(g, r, alpha=0.75, k=16)                  # doctest: +SKIP
>>> scores, idx = search(queries, g, b, top_k=10)             # doctest: +SKIP

Layers (imports point down only; checked by import-linter): ``cli`` -> ``jobs``
-> ``embed`` | ``report`` -> ``scale`` -> ``data`` -> ``core`` -> ``errors``.
"""

from __future__ import annotations

import importlib

from nnn_cli._version import __version__
from nnn_cli.errors import DependencyError, InputError, MismatchError, NNNError, ParameterError

_EXPORTS = {
    "core.nnn": "bias_from_topk compute_bias reference_topk check_alpha check_k merge_topk",
    "core.evaluate": "MethodResult evaluate_index evaluate_ranking",
    "core.truth": "Truth",
    "core.metrics": "hubness recall_at recall_from_topk",
    "core.search": "DebiasedIndex augment_gallery augment_queries search",
    "core.attribute": "attribute_bias compare_attribute_bias precision_at",
    "core.baselines": "BaselineParams rank_dn rank_dualdis rank_dualis rank_qbnorm rank_inverted_softmax",
    "core.methods": "ComparisonMethod MethodData register rank_method",
    "core.baseline_sweep": "tune_baseline",
    "core.compare": "bootstrap_recall compare_methods",
    "core.tune": "TuneResult top1_per_cell truth_ranks tune_grid tune_unsupervised",
    "core.topk": "RunningTopScores topk_scores GemmIndex",
    "core.kmeans": "spherical_kmeans",
    "data.sources": "EmbeddingSource",
    "data.inputs": "open_embeddings",
    "data.biasfile": "BiasFile read_bias write_bias StoredBias load_stored_bias",
    "data.manifest": "load_bias read_manifest_bias",
    "data.results": "write_results",
    "data.tables": "read_truth read_params",
    "data.labels": "read_labels",
    "data.info": "describe_file",
    "data.provenance": "check_bias_matches check_matches_parts combined_fingerprint",
    "data.shards": "ShardedSource open_shard_folder",
    "scale.incremental": "add_reference append_items",
    "scale.budget": "parse_memory_budget plan_blocks",
    "scale.streaming": "streamed_bias streamed_reference_topk",
    "scale.index.listscan": "list_major_topk",
    "scale.index.choose": "IndexChoice choose_index",
    "scale.index.build": "build_index load_index save_index",
    "scale.index.steps": "indexed_reference_topk indexed_search",
    "scale.plan": "plan_bias plan_search run_bias_plan run_search_plan",
    "embed.run": "EmbedSummary embed_input",
    "embed.encoders": "Encoder load_encoder",
    "embed.readers": "InputSource Record open_input",
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names.split()}
_SUBPACKAGES = ("core", "data", "scale", "jobs", "embed", "report", "cli")

__all__ = [
    "__version__",
    "NNNError",
    "InputError",
    "ParameterError",
    "MismatchError",
    "DependencyError",
    *_SUBPACKAGES,
    *_WHERE,
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"nnn_cli.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"nnn_cli.{name}")
    raise AttributeError(f"module 'nnn_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
