"""Exceptions raised by the library.

The library never prints or exits: it raises these, and the CLI turns a
:class:`NNNError` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class NNNError(Exception):
    """Base class: a problem the user can fix (bad input, bad option)."""


class InputError(NNNError, ValueError):
    """An input file is missing, unreadable, or holds data of the wrong shape or values."""


class ParameterError(NNNError, ValueError):
    """An option value is out of range or inconsistent with the inputs (e.g. k > reference size)."""


class MismatchError(NNNError, ValueError):
    """Two files do not belong together (dimensions, lengths, fingerprints, metric)."""


class DependencyError(NNNError, ImportError):
    """An optional dependency is missing; the message says what to install."""


class OutputError(NNNError, OSError):
    """An output could not be written (disk full, read-only file system, ...): exit 2, one line."""


class BusyError(NNNError):
    """Another process holds the lock on a file this run must update; the message names the holder."""


def install_hint(extra: str) -> str:
    """How to add an optional extra, as a command that works from a checkout (``nnn-cli`` is not published)."""
    make = {"embed": "make setup-embed, or "}.get(extra, "")
    return f"{make}.venv/bin/pip install -e '.[{extra}]' in the nnn checkout"
