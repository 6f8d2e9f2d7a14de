"""`nnn export`: a gallery and its bias file into a vector store, as ``[r, b]`` rows any inner-product index serves.

Each row keeps its id, the plain vector (``embedding``), the bias (``nnn_bias``) and ``nnn_vector``
(``[r, b]``, or ``[r, b, sqrt(M^2 - |[r, b]|^2)]`` for an L2 store), so nothing is lost; the store records
the parameters and fingerprints (``nnn info URI --table T``), and ``nnn search --store`` queries it.
One typed request (:class:`ExportRequest`), one typed result (:class:`ExportResult`, ``to_json``); the rows
are built and written by :func:`nnn_cli.scale.stores.write_export`, whatever the store.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from nnn_cli.data.locks import DEFAULT_WAIT
from nnn_cli.data.stores import open_store
from nnn_cli.data.stores.common import check_index_kind, check_store_metric, closing
from nnn_cli.data.stores.records import read_columns
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import NoteFn, Notes, PathLike, open_source, read_checked_bias
from nnn_cli.scale.stores import write_export


@dataclass(frozen=True)
class ExportRequest:
    """A validated `nnn export`: build it with :meth:`build`."""

    gallery: str
    bias: str
    to: str
    table: str = "nnn_items"
    index: str = "none"
    store_metric: str = "ip"
    metric: str = "cosine"
    mode: str = "create"  # create, replace, append
    ids: Optional[str] = None
    ids_column: Optional[str] = None
    with_columns: Optional[str] = None
    force: bool = False
    io_timeout: Optional[float] = None
    storage_options: Optional[dict] = None
    wait: float = DEFAULT_WAIT  # for another writer of an existing table (the store's lock)

    @classmethod
    def build(cls, gallery: PathLike, bias: PathLike, to: str, *, replace: bool = False, append: bool = False,
              **options: Any) -> ExportRequest:  # fmt: skip
        """Check the store metric, index kind, mode and table once."""
        if replace and append:
            raise ParameterError("give --replace (rewrite the table) or --append (add rows), not both")
        paths = {key: os.fspath(options[key]) for key in ("ids", "with_columns") if options.get(key) is not None}
        mode = "append" if append else "replace" if replace else "create"
        req = cls(os.fspath(gallery), os.fspath(bias), str(to), mode=mode, **{**options, **paths})
        check_store_metric(req.store_metric)
        check_index_kind(req.index)
        if not req.table:
            raise ParameterError("--table must not be empty")
        return req


@dataclass
class ExportResult:
    """What `nnn export` wrote; :meth:`to_json` is the ``--json`` document."""

    document: dict
    message: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.document)

    @property
    def summary(self) -> dict:
        return {**self.to_json(), "message": self.message}


def export(
    gallery: PathLike, bias: PathLike, to: str, *, on_note: NoteFn | None = None, **options: Any
) -> ExportResult:
    """Write ``gallery`` with the biases of ``bias`` into ``table`` of the store ``to``.  ``options``:
    :meth:`ExportRequest.build`'s (``table``, ``index``, ``store_metric``, ``replace``, ``append``, ...)."""
    return run_export(ExportRequest.build(gallery, bias, to, **options), on_note=on_note)


def run_export(req: ExportRequest, *, on_note: NoteFn | None = None) -> ExportResult:
    """Carry out a built :class:`ExportRequest`: inputs checked, then one atomic write to the store."""
    notes = Notes(on_note)
    g_src = open_source(req.gallery, "gallery", notes, req.ids, req.ids_column)
    bf = read_checked_bias(req.bias, g_src, req.metric, req.force)
    extra = read_columns(req.with_columns, g_src.n) if req.with_columns is not None else {}
    spec = {"mode": req.mode, "index": req.index, "store_metric": req.store_metric, "metric": req.metric,
            "model": _model_attrs(g_src)}  # fmt: skip
    with closing(open_store(req.to, io_timeout=req.io_timeout, storage_options=req.storage_options)) as store:
        # an existing table is read (--append) or rewritten under the store's writers' lock; a new one is
        # created whole or refused by the store itself
        exists = req.mode == "append" or store.exists(req.table)
        with store.lock(req.table, req.wait) if exists else contextlib.nullcontext():
            meta = write_export(store, req.table, g_src, bf.bias, spec, bf.attrs, extra)
        label = store.label
    doc = {"store": label, "table": req.table, "mode": req.mode, "rows": g_src.n, "n_gallery": meta["n_gallery"],
           "dim": g_src.dim, "store_metric": meta["store_metric"], "index": req.index, "alpha": meta.get("alpha"),
           "k": meta.get("k"), "metric": req.metric}  # fmt: skip
    verb = {"create": "wrote", "replace": "rewrote", "append": "appended to"}[req.mode]
    message = (
        f"{verb} {label} table {req.table!r}: {g_src.n} rows of [r, b] (d={g_src.dim}+1, {meta['store_metric']}"
        f"{', index ' + req.index if req.index != 'none' else ''}); query it with nnn search --store"
    )
    return ExportResult(doc, message, notes.lines)


def _model_attrs(g_src: Any) -> dict:
    """The embedding model the gallery records (``nnn embed``'s attributes), for `nnn query --store`."""
    from nnn_cli.embed.query import gallery_model

    attrs = gallery_model(g_src)
    return {key: attrs[key] for key in ("model", "model_kind", "modality", "image_size") if key in attrs}
