"""nnn: Nearest Neighbor Normalization (Chowdhury et al., EMNLP 2024) for contrastive retrieval.

Library first: every CLI command is a thin layer over these functions.

>>> from nnn_cli import open_embeddings, compute_bias, search
>>> g = open_embeddings("gallery.h5").read("cosine")          # doctest: +SKIP
>>> r = open_embeddings("reference.h5").read("cosine")        # doctest: +SKIP
>>> b = compute_bias(g, r, alpha=0.75, k=16)                  # doctest: +SKIP
>>> scores, idx = search(queries, g, b, top_k=10)             # doctest: +SKIP
"""

__version__ = "0.1.0"

from .bias import bias_from_topk, compute_bias, prefix_means, reference_topk  # noqa: E402
from .errors import DependencyError, InputError, MismatchError, NNNError, ParameterError  # noqa: E402
from .evaluate import MethodResult, evaluate, evaluate_index, evaluate_ranking  # noqa: E402
from .io import (  # noqa: E402
    EmbeddingSource,
    Truth,
    open_embeddings,
    read_bias,
    read_params,
    read_truth,
    write_bias,
    write_results,
)
from .metrics import hubness, recall_at, recall_from_topk  # noqa: E402
from .search import DebiasedIndex, augment_gallery, augment_queries, search  # noqa: E402
from .attribute import attribute_bias, compare_attribute_bias, precision_at, read_labels  # noqa: E402
from .baselines import (  # noqa: E402
    BaselineParams,
    rank_dn,
    rank_dualdis,
    rank_dualis,
    rank_method,
    rank_qbnorm,
    tune_baseline,
)
from .compare import bootstrap_recall, compare_methods  # noqa: E402
from .embed import EmbedSummary, embed_input  # noqa: E402  (torch is imported only when a model loads)
from .encoders import Encoder, load_encoder  # noqa: E402
from .readers import InputSource, Record, open_input  # noqa: E402
from .tune import TuneResult, top1_per_cell, truth_ranks, tune_grid, tune_unsupervised  # noqa: E402
from .incremental import StoredBias, add_reference, append_items, load_stored_bias, merge_topk  # noqa: E402
from .info import describe_file  # noqa: E402
from .provenance import check_bias_matches, check_matches_parts, combined_fingerprint  # noqa: E402
from .topk import RunningTopScores, topk_scores  # noqa: E402
from .kmeans import spherical_kmeans  # noqa: E402
from .listscan import list_major_topk  # noqa: E402
from .budget import parse_memory_budget, plan_blocks  # noqa: E402
from .shards import ShardedSource, open_shard_folder  # noqa: E402
from .streaming import streamed_bias, streamed_reference_topk  # noqa: E402
from .ann import (  # noqa: E402
    IndexChoice,
    build_index,
    choose_index,
    indexed_reference_topk,
    indexed_search,
    load_index,
    save_index,
)
from .scale import plan_bias, plan_search, run_bias_plan, run_search_plan  # noqa: E402

__all__ = [
    "__version__",
    "bias_from_topk", "compute_bias", "prefix_means", "reference_topk",
    "NNNError", "InputError", "ParameterError", "MismatchError", "DependencyError",
    "MethodResult", "evaluate", "evaluate_index", "evaluate_ranking",
    "EmbeddingSource", "Truth", "open_embeddings", "read_bias", "read_params", "read_truth",
    "write_bias", "write_results",
    "hubness", "recall_at", "recall_from_topk",
    "DebiasedIndex", "augment_gallery", "augment_queries", "search",
    "attribute_bias", "compare_attribute_bias", "precision_at", "read_labels",
    "BaselineParams", "rank_dn", "rank_dualdis", "rank_dualis", "rank_method", "rank_qbnorm", "tune_baseline",
    "bootstrap_recall", "compare_methods",
    "EmbedSummary", "embed_input", "Encoder", "load_encoder", "InputSource", "Record", "open_input",
    "TuneResult", "top1_per_cell", "truth_ranks", "tune_grid", "tune_unsupervised",
    "StoredBias", "add_reference", "append_items", "load_stored_bias", "merge_topk", "describe_file",
    "check_bias_matches", "check_matches_parts", "combined_fingerprint",
    "RunningTopScores", "topk_scores", "spherical_kmeans", "list_major_topk", "parse_memory_budget", "plan_blocks", "ShardedSource", "open_shard_folder",
    "streamed_bias", "streamed_reference_topk", "IndexChoice", "build_index", "choose_index",
    "indexed_reference_topk", "indexed_search", "load_index", "save_index",
    "plan_bias", "plan_search", "run_bias_plan", "run_search_plan",
]
