"""What every store shares: masked credentials, the [r, b] rows and the MIPS-to-L2 reduction (equal ranking,
a hypothesis property), the store-metric and URI checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnn_cli.data.stores import is_store_uri, open_store
from nnn_cli.data.stores.common import (
    check_store_metric,
    l2_rows,
    mask_uri,
    nnn_rows,
    query_rows,
    score_from_l2,
    scrub,
    uri_secrets,
)
from nnn_cli.errors import ParameterError


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("postgresql://me:hunter2@db.example/shop", "postgresql://me:***@db.example/shop"),
        ("postgresql://me@/shop?host=/run/pg&password=hunter2", "postgresql://me@/shop?host=/run/pg&password=***"),
        ("postgresql://me:p%40ss@/shop?host=/tmp/x", "postgresql://me:***@/shop?host=/tmp/x"),
        ("qdrant:http://h:6333?api_key=hunter2", "qdrant:http://h:6333?api_key=***"),
        ("lancedb:./vectors", "lancedb:./vectors"),
        ("lancedb:s3://bucket/db", "lancedb:s3://bucket/db"),
    ],
)
def test_mask_uri(uri, masked):
    assert mask_uri(uri) == masked
    for secret in uri_secrets(uri):
        assert secret not in mask_uri(uri)
        assert "***" in scrub(f"failed for {secret}\n again", [secret])


def test_store_uri_and_metric_checks():
    assert is_store_uri("postgresql://x@/db") and is_store_uri("lancedb:x") and is_store_uri("qdrant:x")
    assert not is_store_uri("gallery.h5") and not is_store_uri("s3://bucket/g.h5")
    with pytest.raises(ParameterError, match="cosine renormalises"):
        check_store_metric("cosine")
    with pytest.raises(ParameterError, match="use ip or l2"):
        check_store_metric("hamming")
    with pytest.raises(ParameterError, match="not a store URI"):
        open_store("mysql://x")
    with pytest.raises(ParameterError, match="io-timeout"):
        open_store("lancedb:/tmp/x", io_timeout=0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    d=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 10.0),
)
def test_l2_reduction_ranks_as_inner_product(n, d, seed, scale):
    """[r, b, sqrt(M^2 - |[r, b]|^2)] against [q, -1, 0]: ascending L2 distance = descending q.r - b."""
    rng = np.random.default_rng(seed)
    g = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    b = rng.uniform(-1, 1, n).astype(np.float32)
    q = rng.standard_normal((3, d)).astype(np.float32)
    rows, m = l2_rows(nnn_rows(g, b))
    assert np.allclose(np.linalg.norm(rows.astype(np.float64), axis=1), m, rtol=1e-5)
    qa = query_rows(q, "l2")
    dist = np.linalg.norm(rows[None, :, :].astype(np.float64) - qa[:, None, :].astype(np.float64), axis=2)
    debiased = q.astype(np.float64) @ g.T.astype(np.float64) - b[None, :]
    assert np.allclose(score_from_l2(dist, qa, m), debiased, atol=1e-3 * (1 + m * m))
    for i in range(len(q)):  # the same order, except among near-ties
        by_l2 = np.argsort(dist[i], kind="stable")
        s = debiased[i][by_l2]
        assert (np.diff(s) <= 1e-4 * (1 + m * m)).all()


def test_l2_bound_refuses_larger_rows():
    rows, m = l2_rows(np.array([[3.0, 4.0]], dtype=np.float32))
    assert m == pytest.approx(5.0) and rows[0, 2] == pytest.approx(0.0)
    with pytest.raises(ParameterError, match="exceeds the table's L2 bound"):
        l2_rows(np.array([[6.0, 0.0]], dtype=np.float32), max_norm=m)
