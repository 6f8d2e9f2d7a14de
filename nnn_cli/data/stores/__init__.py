"""Vector stores as sources and sinks: PostgreSQL + pgvector, LanceDB, Qdrant.

:func:`open_store` parses the URI and returns a :class:`~nnn_cli.data.stores.common.VectorStore`
(the jobs never ask which one):

- ``postgresql://user@host/db`` (libpq URI; ``?host=/socket/dir`` for a Unix socket; the password from
  the URI, ``PGPASSWORD`` or ``~/.pgpass``)
- ``lancedb:PATH_OR_URL`` (a local folder or an object-store URL such as ``s3://bucket/db``)
- ``qdrant:PATH`` (Qdrant's embedded local mode) or ``qdrant:http://HOST:6333``
"""

from __future__ import annotations

from nnn_cli.data.stores.common import (
    StoreHits,
    VectorStore,
    WriteSpec,
    mask_uri,
    resolve_io_timeout,
)
from nnn_cli.errors import ParameterError

SCHEMES = ("postgresql://", "postgres://", "lancedb:", "qdrant:")


def is_store_uri(text: object) -> bool:
    """Whether ``text`` names a vector store rather than a file."""
    return isinstance(text, str) and text.startswith(SCHEMES)


def open_store(
    uri: str,
    *,
    io_timeout: float | None = None,
    storage_options: dict | None = None,
    application: str = "nnn",
) -> VectorStore:
    """Connect to the store ``uri`` names (within ``io_timeout`` seconds), or raise a one-line error."""
    io_timeout = resolve_io_timeout(io_timeout)
    if uri.startswith(("postgresql://", "postgres://")):
        from nnn_cli.data.stores.pgvector import PgVectorStore

        return PgVectorStore(uri, io_timeout, application)
    if uri.startswith("lancedb:"):
        from nnn_cli.data.stores.lance import LanceStore

        return LanceStore(uri, io_timeout, storage_options)
    if uri.startswith("qdrant:"):
        from nnn_cli.data.stores.qdrant import QdrantStore

        return QdrantStore(uri, io_timeout)
    raise ParameterError(
        f"{mask_uri(uri)}: not a store URI: use postgresql://..., lancedb:PATH_OR_URL or qdrant:PATH / qdrant:http://HOST:6333"
    )


__all__ = ["SCHEMES", "StoreHits", "VectorStore", "WriteSpec", "is_store_uri", "mask_uri", "open_store"]
