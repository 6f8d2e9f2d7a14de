"""Use cases, one per command.  Each validates every input and output first (exit-2 errors cost
milliseconds and leave nothing behind), opens, plans, runs, records provenance and writes; it returns
a :class:`~nnn_cli.jobs.common.JobResult` and never prints.

>>> from nnn_cli import jobs
>>> jobs.bias("g.h5", reference="r.h5", output="bias.h5", alpha=0.75, k=16).summary["bias_mean"]  # doctest: +SKIP
"""

from nnn_cli.jobs.attribute import attribute_bias
from nnn_cli.jobs.bias import BiasRequest, BiasResult, bias, run_bias
from nnn_cli.jobs.common import EngineOptions, IndexOptions, JobResult
from nnn_cli.jobs.embed import embed
from nnn_cli.jobs.eval import evaluate
from nnn_cli.jobs.info import info
from nnn_cli.jobs.query import query
from nnn_cli.jobs.search import SearchRequest, SearchResult, run_search, search
from nnn_cli.jobs.truth import truth_from_pairs
from nnn_cli.jobs.tune import tune

__all__ = [
    "attribute_bias",
    "bias",
    "BiasRequest",
    "BiasResult",
    "run_bias",
    "run_search",
    "SearchRequest",
    "SearchResult",
    "embed",
    "evaluate",
    "info",
    "query",
    "search",
    "truth_from_pairs",
    "tune",
    "EngineOptions",
    "IndexOptions",
    "JobResult",
]
