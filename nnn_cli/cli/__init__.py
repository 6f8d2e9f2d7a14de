"""The `nnn` command line: each command parses, calls one job in :mod:`nnn_cli.jobs`, renders."""

from nnn_cli.cli.app import app, main

__all__ = ["app", "main"]
