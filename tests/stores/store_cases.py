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


def split_reference(tmp_path, reference: np.ndarray, at: int):
    """The reference as two .npy parts (first ``at`` rows, the rest) and whole: for `--reference-add`."""
    a, b, whole = tmp_path / "ref_a.npy", tmp_path / "ref_b.npy", tmp_path / "ref_all.npy"
    np.save(a, reference[:at])
    np.save(b, reference[at:])
    np.save(whole, reference)
    return a, b, whole


def check_reference_add(uri: str, table: str, column: str, tmp_path, hub_data, file_bias: np.ndarray, read_bias):
    """In place with part A of the reference, then --reference-add part B: equals the bias from the whole
    reference (exact, to float32 rounding); B again is refused; --only-new then takes the whole reference."""
    a, b, whole = split_reference(tmp_path, hub_data.reference, 1200)
    base = ["bias", uri, "--table", table, "--column", column, "--in-place"]
    assert_ok(run(*base, "-r", a, "--alpha", "0.75", "--k", "16"))
    part = read_bias()
    assert not np.allclose(part, file_bias, atol=1e-4)
    res = assert_ok(run(*base, "--reference-add", b, "--json"))
    assert json.loads(res.stdout)["n_reference"] == len(hub_data.reference)
    assert np.allclose(read_bias(), file_bias, atol=1e-6)
    assert_clean_error(run(*base, "--reference-add", b), "already part of the reference")
    assert_clean_error(run(*base, "--reference-add", b, "-r", a), "drop -r")
    res = assert_ok(run(*base, "-r", whole, "--only-new", "--json"))
    assert json.loads(res.stdout)["rows"] == 0
    assert_clean_error(run(*base, "-r", a, "--only-new"), "reference")
