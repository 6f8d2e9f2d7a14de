"""The dimension rule lives once (nnn_cli.core.nnn.check_same_dims): arrays, sources, the search
index and the CLI all refuse a mismatch with the same message, naming each input and its d."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nnn_cli.cli.application import app
from nnn_cli.core.baselines import rank_dn
from nnn_cli.core.nnn import check_dims, check_same_dims, compute_bias
from nnn_cli.core.search import DebiasedIndex
from nnn_cli.data.inputs import check_same_dim, open_embeddings
from nnn_cli.errors import MismatchError


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_rule_hand_computed():
    assert check_same_dims([("gallery", 8), ("reference", 8)]) == 8
    with pytest.raises(MismatchError) as err:
        check_same_dims([("gallery", 8), ("reference", 4), ("queries", 8)])
    assert str(err.value) == "dimension mismatch: gallery d=8, reference d=4, queries d=8"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=5))
def test_the_rule_refuses_exactly_when_dims_differ(dims):
    named = [(f"x{i}", d) for i, d in enumerate(dims)]
    if len(set(dims)) == 1:
        assert check_same_dims(named) == dims[0]
    else:
        with pytest.raises(MismatchError, match="^dimension mismatch: x0 d="):
            check_same_dims(named)


def test_arrays_check_through_the_rule():
    g, r = _unit(5, 4, 0), _unit(6, 3, 1)
    assert check_dims(gallery=g, reference=_unit(6, 4, 1), queries=None) == 4
    with pytest.raises(MismatchError) as err:
        compute_bias(g, r, 0.5, 2)
    assert str(err.value) == "dimension mismatch: gallery d=4, reference d=3"
    with pytest.raises(MismatchError) as err:
        DebiasedIndex(g).search(r, 2)
    assert str(err.value) == "dimension mismatch: queries d=3, gallery d=4"
    with pytest.raises(MismatchError) as err:
        rank_dn(_unit(2, 4, 2), g, r, 0.5)
    assert str(err.value).startswith("dimension mismatch: ") and "reference d=3" in str(err.value)


def test_sources_check_through_the_rule(tmp_path):
    np.save(tmp_path / "q.npy", _unit(5, 4, 0))
    np.save(tmp_path / "g.npy", _unit(6, 3, 1))
    q, g = open_embeddings(tmp_path / "q.npy", "queries"), open_embeddings(tmp_path / "g.npy", "gallery")
    check_same_dim(q, open_embeddings(tmp_path / "q.npy", "reference"))
    with pytest.raises(MismatchError) as err:
        check_same_dim(q, g)
    assert str(err.value) == f"dimension mismatch: queries {q.name} d=4, gallery {g.name} d=3"


def test_cli_reports_the_rule_in_one_line_and_writes_nothing(tmp_path):
    np.save(tmp_path / "q.npy", _unit(5, 4, 0))
    np.save(tmp_path / "g.npy", _unit(6, 3, 1))
    out = tmp_path / "r.h5"
    res = CliRunner().invoke(app, ["search", str(tmp_path / "q.npy"), "-g", str(tmp_path / "g.npy"), "-o", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "dimension mismatch: queries " in lines[0] and "q.npy d=4, gallery " in lines[0]
    assert lines[0].endswith("g.npy d=3")
    assert not out.exists()
