"""Run folders read back as one bias wherever a bias is accepted (``search``, ``eval``, ``query``, ``info``),
by path or URL; the format and its checks are :mod:`nnn_cli.data.sinks`."""

from __future__ import annotations

import os
from pathlib import Path

from nnn_cli.data import objstore
from nnn_cli.data.biasfile import BiasFile, read_bias
from nnn_cli.data.sinks import FORMAT, MANIFEST, RunFolderSink, missing_blocks, read_run_bias
from nnn_cli.errors import InputError


def is_manifest(spec: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """True when ``spec`` is a folder/URL holding a run's ``manifest.json``."""
    try:
        return RunFolderSink(str(spec), dict(storage_options or {})).exists()
    except Exception:
        return False


def read_manifest(spec: str | os.PathLike, storage_options: dict | None = None) -> dict:
    """The manifest of a run folder (checked to be one), finished or not."""
    return RunFolderSink(str(spec), dict(storage_options or {})).read_manifest()


def read_manifest_bias(
    spec: str | os.PathLike, storage_options: dict | None = None, with_topk: bool = False
) -> BiasFile:
    """A finished run folder as one verified bias (see :func:`nnn_cli.data.sinks.read_run_bias`)."""
    return read_run_bias(spec, storage_options, with_topk)


def load_bias(spec: str | os.PathLike, storage_options: dict | None = None) -> BiasFile:
    """Any bias input: a bias file (``.h5``/``.npy``), or a run folder (path or URL) of `nnn bias`."""
    text = str(spec)
    if objstore.is_url(text):
        return read_run_bias(text, storage_options)
    if Path(text).is_dir():
        if not (Path(text) / MANIFEST).exists():
            raise InputError(
                f"{text}: is a folder without {MANIFEST}; give a bias file (.h5/.npy) or a run folder of `nnn bias`"
            )
        return read_run_bias(text, storage_options)
    return read_bias(spec)


__all__ = ["FORMAT", "MANIFEST", "is_manifest", "load_bias", "missing_blocks", "read_manifest", "read_manifest_bias"]
