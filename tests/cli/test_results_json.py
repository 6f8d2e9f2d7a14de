"""JSON lines hold only finite numbers: scores that overflow float32 (huge rows under --metric ip) are refused
with one line, exit 2, before anything is written (JSON has no Infinity)."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from nnn_cli.cli.application import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_ok(res):
    assert res.exit_code == 0, (res.exit_code, res.output)
    return res


def assert_clean_error(res, *needles):
    """Exit 2 with one line on stderr, naming each of ``needles``."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_overflowing_scores_refused_before_writing(tmp_path):
    g, q, b = tmp_path / "g.npy", tmp_path / "q.npy", tmp_path / "b.npy"
    np.save(g, np.full((5, 4), 1e20, np.float32))
    np.save(q, np.full((2, 4), 1e20, np.float32))
    np.save(b, np.zeros(5, np.float32))
    base = ("search", q, "--gallery", g, "--bias", b, "--metric", "ip", "--force", "--top-k", 2)
    res = run(*base, "-o", "-")
    assert_clean_error(res, "-o -", "query 0", "inf", "--metric cosine")
    assert not res.stdout.strip()
    out = tmp_path / "hits.jsonl"
    assert_clean_error(run(*base, "-o", out), str(out), "overflow")
    assert not out.exists()
    # finite scores under --metric ip still write valid JSON
    np.save(g, np.full((5, 4), 1e3, np.float32))
    np.save(q, np.full((2, 4), 1e3, np.float32))
    lines = assert_ok(run(*base, "-o", "-")).stdout.splitlines()
    assert [json.loads(line)["results"][0]["score"] for line in lines] == [4e6, 4e6]
