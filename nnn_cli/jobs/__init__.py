"""Use cases, one per command.  Each validates every input and output first (exit-2 errors cost
milliseconds and leave nothing behind), opens, plans, runs, records provenance and writes; it returns
a :class:`~nnn_cli.jobs.common.JobResult` and never prints.

>>> from nnn_cli import jobs
>>> jobs.bias("g.h5", reference="r.h5", output="bias.h5", alpha=0.75, k=16).summary["bias_mean"]  # doctest: +SKIP
"""

from nnn_cli.jobs.attribute import AttributeRequest, AttributeResult, attribute_bias, run_attribute_bias
from nnn_cli.jobs.bias import BiasRequest, BiasResult, bias, run_bias
from nnn_cli.jobs.common import EngineOptions, IndexOptions, JobResult
from nnn_cli.jobs.embed import embed
from nnn_cli.jobs.eval import EvalRequest, EvalResult, evaluate, run_evaluate
from nnn_cli.jobs.export import ExportRequest, ExportResult, export, run_export
from nnn_cli.jobs.info import info
from nnn_cli.jobs.query import query
from nnn_cli.jobs.search import SearchRequest, SearchResult, run_search, search
from nnn_cli.jobs.stores import (
    InPlaceRequest,
    InPlaceResult,
    StoreQueryRequest,
    StoreQueryResult,
    StoreRecallRequest,
    StoreRecallResult,
    StoreSearchRequest,
    StoreSearchResult,
    bias_in_place,
    query_store,
    run_bias_in_place,
    run_query_store,
    run_search_store,
    run_store_recall,
    search_store,
    store_info,
    store_recall,
)
from nnn_cli.jobs.truth import truth_from_pairs
from nnn_cli.jobs.tune import TuneJobResult, TuneRequest, run_tune, tune

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
    "export",
    "bias_in_place",
    "search_store",
    "store_info",
    "store_recall",
    "query_store",
    "info",
    "query",
    "search",
    "truth_from_pairs",
    "tune",
    "EngineOptions",
    "IndexOptions",
    "JobResult",
    "AttributeRequest",
    "AttributeResult",
    "run_attribute_bias",
    "EvalRequest",
    "EvalResult",
    "run_evaluate",
    "TuneRequest",
    "TuneJobResult",
    "run_tune",
    "ExportRequest",
    "ExportResult",
    "run_export",
    "InPlaceRequest",
    "InPlaceResult",
    "run_bias_in_place",
    "StoreSearchRequest",
    "StoreSearchResult",
    "run_search_store",
    "StoreRecallRequest",
    "StoreRecallResult",
    "run_store_recall",
    "StoreQueryRequest",
    "StoreQueryResult",
    "run_query_store",
]
