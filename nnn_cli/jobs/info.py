"""`nnn info`: what a file holds and how it was made (headers and attributes only)."""

from __future__ import annotations

from nnn_cli.data.info import describe_file
from nnn_cli.errors import ParameterError
from nnn_cli.jobs.common import JobResult, PathLike


def info(file: PathLike, *, fingerprint: bool = False) -> JobResult:
    """``summary`` is the `nnn info --json` document."""
    from nnn_cli.data.stores import is_store_uri, mask_uri

    if is_store_uri(str(file)):
        raise ParameterError(f"{mask_uri(str(file))} is a vector store: name its table with --table T")
    return JobResult(describe_file(file, fingerprint=fingerprint))
