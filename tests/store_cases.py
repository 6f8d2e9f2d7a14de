"""What the store tests share: running the CLI, one-line errors, tie-aware comparison of rankings."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from nnn_cli.cli.application import app

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_ok(res):
    assert res.exit_code == 0, (res.exit_code, res.output)
    return res


def assert_clean_error(res, *needles, code=2, secret: str | None = None):
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], lines[0]
    if secret is not None:
        assert secret not in res.output


def jsonl_hits(text: str) -> list[list[tuple[str, float]]]:
    """``nnn search -o -`` output as, per query, a list of (id, score)."""
    out = []
    for line in text.splitlines():
        if line.strip().startswith("{"):
            rec = json.loads(line)
            out.append([(r.get("id", str(r["index"])), r["score"]) for r in rec["results"]])
    return out


def assert_same_ranking(a, b, tol: float = 2e-5):
    """Tie-aware: where the ids at a rank differ, the scores there are within ``tol`` (a near-tie swapped)."""
    assert len(a) == len(b)
    for qa, qb in zip(a, b):
        assert len(qa) == len(qb)
        for (ia, sa), (ib, sb) in zip(qa, qb):
            assert abs(sa - sb) <= tol, (qa, qb)
            if ia != ib:
                assert any(abs(sb2 - sa) <= tol for i2, sb2 in qb if i2 == ia), (qa, qb)


def exact_debiased_topk(queries: np.ndarray, gallery: np.ndarray, bias: np.ndarray, k: int):
    """The oracle: top-k of q.r - b(r) (cosine rows), ties to the lower index."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    s = q.astype(np.float64) @ g.T.astype(np.float64) - bias[None, :]
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=1)[:, :k]
    return order, np.take_along_axis(s, order, 1)
