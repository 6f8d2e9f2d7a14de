"""Open any embedding input as a source: ``.npy``, ``.h5``/``FILE.h5:DATASET``, a folder of ``.npy``
shards, or ``-`` (one array on stdin); headers are checked here, rows when they are read."""

from __future__ import annotations

import os
from pathlib import Path

from nnn_cli.core.nnn import check_same_dims
from nnn_cli.data.h5 import decode_strings, is_h5_path, open_h5_safe, split_spec
from nnn_cli.data.npy import STDIN, load_npy, read_stdin_embeddings
from nnn_cli.data.objstore import is_url, open_url
from nnn_cli.data.shards import open_shard_folder
from nnn_cli.data.sources import EmbeddingSource, read_ids_file, read_sidecar_ids
from nnn_cli.errors import InputError, MismatchError, ParameterError


def open_embeddings(
    spec: str | os.PathLike,
    label: str = "embeddings",
    *,
    ids_file: str | os.PathLike | None = None,
    ids_column: str | None = None,
    storage_options: dict | None = None,
) -> EmbeddingSource:
    """Open an embedding file (``.npy``, ``.h5``, ``FILE.h5:DATASET``, or ``-``: .npy or HDF5 bytes on stdin) and check its header.

    A folder is read as ``.npy`` shards in numeric order (``0.npy, 1.npy, ...``;
    see :mod:`nnn_cli.data.shards`), streamed like one file; its ids come from ``ids_file``,
    ``ids.txt``/``ids.npy`` beside the shards, or clip-retrieval's ``metadata/*.parquet``
    (column ``ids_column``).  ``ids_file`` works for any input and replaces the file's own ids.
    A ``.npy`` file's ids come from the sidecar ``FILE.npy.json`` that ``nnn embed`` writes.

    A URL (``s3://``, ``gs://``, ``file://``, ...; ``storage_options`` for fsspec) opens through
    :func:`nnn_cli.data.objstore.open_url`: the same kinds of input, read by byte ranges, named as written.

    Raises :class:`InputError` naming the file for: missing file, unreadable
    format, missing dataset, not 2-D, empty, non-float dtype.
    """
    if is_url(spec):
        if ids_file is not None or ids_column is not None:
            raise ParameterError(f"{spec}: --ids/--ids-column apply to local inputs; a URL input keeps its own ids")
        return open_url(str(spec), storage_options, label)
    path, dataset = split_spec(spec)
    if str(spec) == STDIN:
        arr, ids = read_stdin_embeddings(label)
        src = EmbeddingSource(Path(STDIN), None, "mem", tuple(arr.shape), arr.dtype, label, _array=arr)
    elif not path.exists():
        raise InputError(f"{path}: no such file (the {label})")
    elif path.is_dir():
        src = open_shard_folder(path, label, ids_file=ids_file, ids_column=ids_column)
        ids = src.ids()
    elif path.suffix.lower() == ".npy":
        arr = load_npy(path, "embeddings", mmap=True)
        src = EmbeddingSource(path, None, "npy", tuple(arr.shape), arr.dtype, label)
        ids = read_sidecar_ids(path, arr.shape[0] if arr.ndim else 0)
    elif is_h5_path(path):
        with open_h5_safe(path) as f:
            if dataset not in f:
                have = ", ".join(sorted(k for k in f.keys())) or "nothing"
                raise InputError(f"{path}: no dataset {dataset!r} (the file has: {have}); name one with {path}:DATASET")
            dset = f[dataset]
            if not hasattr(dset, "shape"):
                raise InputError(f"{path}:{dataset} is a group, not a dataset")
            src = EmbeddingSource(path, dataset, "h5", tuple(dset.shape), dset.dtype, label)
            ids = None
            if "ids" in f and dataset != "ids":
                raw_ids = f["ids"]
                if raw_ids.shape != (src.shape[0] if len(src.shape) else -1,):
                    raise MismatchError(
                        f"{path}: dataset 'ids' has shape {raw_ids.shape} but {dataset!r} has {src.shape[0] if src.shape else 0} rows"
                    )
                ids = decode_strings(raw_ids[()])
    else:
        raise InputError(f"{path}: unknown file type {path.suffix or '(none)'!r}; use .h5/.hdf5 or .npy")
    if len(src.shape) != 2:
        raise InputError(f"{src.name}: expected a 2-D array (N, d), got shape {src.shape}")
    if src.shape[0] == 0 or src.shape[1] == 0:
        raise InputError(f"{src.name}: empty array of shape {src.shape}")
    if src.dtype.kind != "f":
        raise InputError(f"{src.name}: dtype {src.dtype} is not floating point; store float16 or float32")
    if (
        ids_column is not None
        and not path.is_dir()
        and not (ids_file is not None and str(ids_file).endswith(".parquet"))
    ):
        raise ParameterError(
            "--ids-column picks a column of parquet metadata: use it with a shard folder or with --ids FILE.parquet"
        )
    if ids_file is not None and not path.is_dir():
        ids = read_ids_file(ids_file, src.n, src.name, ids_column)
    src._ids = ids
    return src


def check_same_dim(*sources: EmbeddingSource) -> None:
    """Raise :class:`MismatchError` unless all sources share one dimension (the one rule:
    :func:`nnn_cli.core.nnn.check_same_dims`, each source named by its role and file)."""
    check_same_dims((f"{s.label} {s.name}", s.dim) for s in sources)
