"""Use cases, one per command.  Each validates every input and output first (exit-2 errors cost
milliseconds and leave nothing behind), opens, plans, runs, records provenance and writes; it returns
a :class:`~nnn_cli.jobs.common.JobResult` and never prints.

>>> from nnn_cli import jobs
>>> jobs.bias("g.h5", reference="r.h5", output="bias.h5", alpha=0.75, k=16).summary["bias_mean"]  # doctest: +SKIP

The jobs are imported on first use (``jobs.query`` loads :mod:`nnn_cli.jobs.query` only), so a
command starts without importing every other command's modules.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nnn_cli.jobs.attribute import AttributeRequest, AttributeResult, attribute_bias, run_attribute_bias
    from nnn_cli.jobs.bias import BiasRequest, BiasResult, bias, in_place_target, run_bias
    from nnn_cli.jobs.common import EngineOptions, IdsColumns, IndexOptions, JobResult
    from nnn_cli.jobs.embed import EmbedRequest, embed, run_embed
    from nnn_cli.jobs.eval import EvalRequest, EvalResult, evaluate, run_evaluate
    from nnn_cli.jobs.export import ExportRequest, ExportResult, export, run_export
    from nnn_cli.jobs.info import info
    from nnn_cli.jobs.query import query
    from nnn_cli.jobs.search import SearchRequest, SearchResult, run_search, search
    from nnn_cli.jobs.stores import (
        StoreQueryRequest,
        StoreQueryResult,
        StoreRecallRequest,
        StoreRecallResult,
        StoreSearchRequest,
        StoreSearchResult,
        query_store,
        run_query_store,
        run_search_store,
        run_store_recall,
        search_store,
        store_info,
        store_recall,
    )
    from nnn_cli.jobs.truth import truth_from_pairs
    from nnn_cli.jobs.tune import TuneJobResult, TuneRequest, run_tune, tune

_WHERE = {  # public name: the submodule that defines it
    "AttributeRequest": "attribute",
    "AttributeResult": "attribute",
    "attribute_bias": "attribute",
    "run_attribute_bias": "attribute",
    "BiasRequest": "bias",
    "BiasResult": "bias",
    "bias": "bias",
    "run_bias": "bias",
    "EngineOptions": "common",
    "IdsColumns": "common",
    "IndexOptions": "common",
    "JobResult": "common",
    "EmbedRequest": "embed",
    "embed": "embed",
    "run_embed": "embed",
    "EvalRequest": "eval",
    "EvalResult": "eval",
    "evaluate": "eval",
    "run_evaluate": "eval",
    "ExportRequest": "export",
    "ExportResult": "export",
    "export": "export",
    "run_export": "export",
    "info": "info",
    "query": "query",
    "SearchRequest": "search",
    "SearchResult": "search",
    "run_search": "search",
    "search": "search",
    "StoreQueryRequest": "stores",
    "StoreQueryResult": "stores",
    "StoreRecallRequest": "stores",
    "StoreRecallResult": "stores",
    "StoreSearchRequest": "stores",
    "StoreSearchResult": "stores",
    "in_place_target": "bias",
    "query_store": "stores",
    "run_query_store": "stores",
    "run_search_store": "stores",
    "run_store_recall": "stores",
    "search_store": "stores",
    "store_info": "stores",
    "store_recall": "stores",
    "truth_from_pairs": "truth",
    "TuneJobResult": "tune",
    "TuneRequest": "tune",
    "run_tune": "tune",
    "tune": "tune",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


class _Jobs(types.ModuleType):
    """Keeps ``jobs.bias``, ``jobs.query``... the job functions: importing a submodule of the same name
    (``nnn_cli.jobs.bias``) binds the submodule on the package, which would hide the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Jobs

__all__ = [
    "AttributeRequest",
    "AttributeResult",
    "attribute_bias",
    "run_attribute_bias",
    "BiasRequest",
    "BiasResult",
    "bias",
    "run_bias",
    "EngineOptions",
    "IdsColumns",
    "IndexOptions",
    "JobResult",
    "EmbedRequest",
    "embed",
    "run_embed",
    "EvalRequest",
    "EvalResult",
    "evaluate",
    "run_evaluate",
    "ExportRequest",
    "ExportResult",
    "export",
    "run_export",
    "info",
    "query",
    "SearchRequest",
    "SearchResult",
    "run_search",
    "search",
    "StoreQueryRequest",
    "StoreQueryResult",
    "StoreRecallRequest",
    "StoreRecallResult",
    "StoreSearchRequest",
    "StoreSearchResult",
    "in_place_target",
    "query_store",
    "run_query_store",
    "run_search_store",
    "run_store_recall",
    "search_store",
    "store_info",
    "store_recall",
    "truth_from_pairs",
    "TuneJobResult",
    "TuneRequest",
    "run_tune",
    "tune",
]
