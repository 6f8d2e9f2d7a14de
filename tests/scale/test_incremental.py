"""Incremental biases (`nnn bias --append-to`, `--update --reference-add`) equal a full recompute."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from nnn_cli.cli.application import app
from nnn_cli.core.nnn import bias_from_topk, merge_topk, reference_topk
from nnn_cli.data.biasfile import StoredBias, load_stored_bias
from nnn_cli.data.provenance import base_attrs, bias_provenance, check_matches_parts, combined_fingerprint
from nnn_cli.data.sources import EmbeddingSource
from nnn_cli.errors import InputError, MismatchError, ParameterError
from nnn_cli.scale.incremental import add_reference, append_items

runner = CliRunner()


def mem_source(arr: np.ndarray, label: str = "embeddings") -> EmbeddingSource:
    arr = np.ascontiguousarray(arr)
    return EmbeddingSource(Path("-"), None, "mem", tuple(arr.shape), arr.dtype, label, _array=arr)


def full_bias(g, r, alpha, k, metric):
    gs, rs = mem_source(g), mem_source(r)
    topk = reference_topk(gs.read(metric), rs.read(metric), k)
    return bias_from_topk(topk, alpha, k), topk


def fresh_stored(g, r, alpha, k, metric) -> StoredBias:
    """What `nnn bias` would write for (g, r), kept in memory."""
    gs, rs = mem_source(g), mem_source(r)
    bias, topk = full_bias(g, r, alpha, k, metric)
    attrs = base_attrs("bias", alpha=alpha, k=k, metric=metric)
    attrs.update(bias_provenance(gs, rs))
    return StoredBias(Path("mem.h5"), bias, topk, None, attrs)


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def read_h5(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


# ---------------------------------------------------------------------------
# merge_topk: hand-computed
# ---------------------------------------------------------------------------
def test_merge_topk_by_hand():
    stored = np.array([[0.9, 0.5, 0.1], [0.3, 0.2, 0.1]], dtype=np.float32)
    new = np.array([[0.6, 0.05], [0.8, 0.3]], dtype=np.float32)
    got = merge_topk(stored, new, 3)
    np.testing.assert_array_equal(got, np.array([[0.9, 0.6, 0.5], [0.8, 0.3, 0.3]], dtype=np.float32))
    assert got.dtype == np.float32 and got.flags.c_contiguous


def test_merge_topk_rejects_misaligned_rows():
    with pytest.raises(MismatchError):
        merge_topk(np.zeros((2, 2), np.float32), np.zeros((3, 2), np.float32), 2)


# ---------------------------------------------------------------------------
# Property: any sequence of appends and reference additions == full recompute
# ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n_parts=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    m_parts=st.lists(st.integers(1, 15), min_size=1, max_size=3),
    k=st.integers(1, 6),
    alpha=st.sampled_from([0.0, 0.25, 0.75, 1.5]),
    integer_data=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_incremental_equals_full(seed, n_parts, m_parts, k, alpha, integer_data, order):
    rng = np.random.default_rng(seed)
    d = 5
    m_total = sum(m_parts)
    k = min(k, m_parts[0])  # the first bias file needs k <= its reference size
    if integer_data:  # exact scores and many exact ties: results must match bit for bit
        g = np.hstack([rng.integers(-2, 3, (sum(n_parts), d - 1)), np.ones((sum(n_parts), 1))]).astype(np.float32)
        r = np.hstack([rng.integers(-2, 3, (m_total, d - 1)), np.ones((m_total, 1))]).astype(np.float32)
        metric = "ip"
    else:
        g = rng.standard_normal((sum(n_parts), d)).astype(np.float32)
        r = rng.standard_normal((m_total, d)).astype(np.float32)
        metric = "cosine"
    g_cuts = np.cumsum([0] + n_parts)
    r_cuts = np.cumsum([0] + m_parts)
    g_chunks = [g[a:b] for a, b in zip(g_cuts[:-1], g_cuts[1:])]
    r_chunks = [r[a:b] for a, b in zip(r_cuts[:-1], r_cuts[1:])]

    stored = fresh_stored(g_chunks[0], r_chunks[0], alpha, k, metric)
    ops = [("append", c) for c in g_chunks[1:]] + [("reference-add", c) for c in r_chunks[1:]]
    order.shuffle(ops)
    g_have, r_have = [g_chunks[0]], [r_chunks[0]]
    for op, chunk in ops:
        if op == "append":
            bias, topk, ids, attrs = append_items(stored, mem_source(chunk), mem_source(np.vstack(r_have)), metric)
            g_have.append(chunk)
        else:
            bias, topk, ids, attrs = add_reference(stored, mem_source(np.vstack(g_have)), mem_source(chunk), metric)
            r_have.append(chunk)
        stored = StoredBias(stored.path, bias, topk, ids, attrs)

    g, r = np.vstack(g_have), np.vstack(r_have)  # the parts in the order they were added
    want_bias, want_topk = full_bias(g, r, alpha, k, metric)
    assert stored.bias.dtype == np.float32 and stored.bias.shape == (len(g),)
    if integer_data:
        np.testing.assert_array_equal(stored.topk, want_topk)
        np.testing.assert_array_equal(stored.bias, want_bias)
    else:
        np.testing.assert_allclose(stored.topk, want_topk, rtol=0, atol=1e-6)
        np.testing.assert_allclose(stored.bias, want_bias, rtol=0, atol=1e-6)
    # the concatenated files match the recorded parts; history has one entry per operation
    check_matches_parts(stored.attrs, "gallery", mem_source(g), "bias", "")
    check_matches_parts(stored.attrs, "reference", mem_source(r), "bias", "")
    assert len(stored.attrs["history"]) == 1 + len(ops)
    assert stored.attrs["n_gallery"] == len(g) and stored.attrs["n_reference"] == len(r)


def test_combined_fingerprint_is_the_single_part_or_a_hash_of_the_list():
    one = [{"rows": 3, "fingerprint": "aa"}]
    two = one + [{"rows": 2, "fingerprint": "bb"}]
    assert combined_fingerprint(one) == "aa"
    assert combined_fingerprint(two).startswith("parts:")
    assert combined_fingerprint(two) != combined_fingerprint(two[::-1])


def test_library_refuses_wrong_reference_and_double_adds(hub_data):
    g, r = hub_data.gallery[:50], hub_data.reference[:200]
    stored = fresh_stored(g, r, 0.5, 4, "cosine")
    with pytest.raises(MismatchError, match="reference"):
        append_items(stored, mem_source(hub_data.gallery[50:60]), mem_source(r[:150]), "cosine")
    with pytest.raises(MismatchError, match="metric"):
        append_items(stored, mem_source(hub_data.gallery[50:60]), mem_source(r), "ip")
    with pytest.raises(MismatchError, match="alpha"):
        append_items(stored, mem_source(hub_data.gallery[50:60]), mem_source(r), "cosine", alpha=0.6)
    with pytest.raises(MismatchError, match="gallery"):
        add_reference(stored, mem_source(hub_data.gallery[1:51]), mem_source(r[:10]), "cosine")
    with pytest.raises(ParameterError, match="already part"):
        add_reference(stored, mem_source(g), mem_source(r), "cosine")
    no_topk = StoredBias(stored.path, stored.bias, None, None, stored.attrs)
    with pytest.raises(InputError, match="topk"):
        add_reference(no_topk, mem_source(g), mem_source(r[:10]), "cosine")


# ---------------------------------------------------------------------------
# CLI end to end
# ---------------------------------------------------------------------------
@pytest.fixture
def split_files(tmp_path, hub_data):
    """Gallery and reference as whole files and as two parts each (HDF5 with ids)."""

    def save(name, arr, ids):
        p = tmp_path / f"{name}.h5"
        with h5py.File(p, "w") as f:
            f["embeddings"] = arr
            f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
        return p

    g, r = hub_data.gallery, hub_data.reference[:800]
    gids = [f"g{i}" for i in range(len(g))]
    rids = [f"r{i}" for i in range(len(r))]
    return {
        "g": save("g", g, gids),
        "g1": save("g1", g[:200], gids[:200]),
        "g2": save("g2", g[200:], gids[200:]),
        "r": save("r", r, rids),
        "r1": save("r1", r[:500], rids[:500]),
        "r2": save("r2", r[500:], rids[500:]),
        "q": save("q", hub_data.queries[:50], [f"q{i}" for i in range(50)]),
        "dir": tmp_path,
    }


def test_cli_append_to_equals_full(split_files):
    f = split_files
    full, inc = f["dir"] / "full.h5", f["dir"] / "inc.h5"
    assert run("bias", f["g"], "-r", f["r"], "--alpha", 0.75, "--k", 8, "-o", full, "-q").exit_code == 0
    assert run("bias", f["g1"], "-r", f["r"], "--alpha", 0.75, "--k", 8, "-o", inc, "-q").exit_code == 0
    res = run("bias", f["g2"], "-r", f["r"], "--alpha", 0.75, "--k", 8, "--append-to", inc, "--json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_added"] == 100
    want, _ = read_h5(full)
    got, attrs = read_h5(inc)
    np.testing.assert_allclose(got["bias"], want["bias"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["topk"], want["topk"], atol=1e-6, rtol=0)
    assert [x.decode() for x in got["ids"]] == [x.decode() for x in want["ids"]]
    history = json.loads(attrs["history"])
    assert [h["op"] for h in history] == ["create", "append"]
    assert history[1]["n_added"] == 100 and history[1]["source"].startswith(str(f["g2"]))
    assert attrs["gallery_fingerprint"].startswith("parts:") and attrs["n_gallery"] == 300
    # the whole gallery file matches the grown bias file: search accepts it without --force
    out = f["dir"] / "res.h5"
    res = run("search", f["q"], "-g", f["g"], "-b", inc, "-o", out, "-q")
    assert res.exit_code == 0, res.output
    # ...but not the first part alone, nor a gallery in another order
    assert run("search", f["q"], "-g", f["g1"], "-b", inc, "-o", out, "-q").exit_code == 2


def test_cli_update_reference_add_equals_full(split_files):
    f = split_files
    full, upd = f["dir"] / "full.h5", f["dir"] / "upd.h5"
    assert run("bias", f["g"], "-r", f["r"], "--alpha", 0.5, "--k", 16, "-o", full, "-q").exit_code == 0
    assert run("bias", f["g"], "-r", f["r1"], "--alpha", 0.5, "--k", 16, "-o", upd, "-q").exit_code == 0
    out = f["dir"] / "upd2.h5"
    res = run("bias", f["g"], "--update", upd, "--reference-add", f["r2"], "-o", out, "-q")
    assert res.exit_code == 0, res.output
    want, _ = read_h5(full)
    got, attrs = read_h5(out)
    np.testing.assert_allclose(got["bias"], want["bias"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(got["topk"], want["topk"], atol=1e-6, rtol=0)
    parts = json.loads(attrs["reference_parts"])
    assert [p["rows"] for p in parts] == [500, 300]
    assert attrs["reference_fingerprint"] == combined_fingerprint(parts)
    assert json.loads(attrs["history"])[-1]["op"] == "reference-add"
    # -o elsewhere left the original untouched; appending now needs the whole reference r1 + r2 (= r)
    assert read_h5(upd)[1]["n_reference"] == 500
    res = run("bias", f["g2"], "-r", f["r1"], "--append-to", out, "-o", f["dir"] / "x.h5", "-q")
    assert res.exit_code == 2 and "reference" in res.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k", "4"], "k=8"),
        (["--alpha", "0.5"], "alpha=0.75"),
        (["--metric", "ip"], "metric cosine"),
    ],
)
def test_cli_append_refuses_other_parameters(split_files, extra, message):
    f = split_files
    inc = f["dir"] / "inc.h5"
    run("bias", f["g1"], "-r", f["r"], "--alpha", 0.75, "--k", 8, "-o", inc, "-q")
    before = inc.read_bytes()
    res = run("bias", f["g2"], "-r", f["r"], "--append-to", inc, *extra)
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert inc.read_bytes() == before


def test_cli_refuses_adding_the_same_data_twice(split_files):
    f = split_files
    upd = f["dir"] / "upd.h5"
    run("bias", f["g"], "-r", f["r1"], "--alpha", 0.5, "--k", 16, "-o", upd, "-q")
    assert run("bias", f["g"], "--update", upd, "--reference-add", f["r2"], "-q").exit_code == 0
    before = upd.read_bytes()
    res = run("bias", f["g"], "--update", upd, "--reference-add", f["r2"])
    assert res.exit_code == 2 and "already part" in res.output
    assert upd.read_bytes() == before


def test_no_store_topk_then_update_is_refused(split_files):
    f = split_files
    out = f["dir"] / "small.h5"
    assert (
        run("bias", f["g"], "-r", f["r1"], "--alpha", 0.5, "--k", 16, "-o", out, "--no-store-topk", "-q").exit_code == 0
    )
    assert "topk" not in read_h5(out)[0]
    res = run("bias", f["g"], "--update", out, "--reference-add", f["r2"])
    assert res.exit_code == 2 and "topk" in res.output
    # appending still works (the bias of new rows does not need the old top-k)
    res = run("bias", f["g2"], "-r", f["r1"], "--append-to", out, "-o", f["dir"] / "grown.h5", "-q")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--append-to", "{bias}", "--update", "{bias}", "-r", "{r}"], "either"),
        (["--append-to", "{bias}"], "--reference"),
        (["--update", "{bias}"], "--reference-add"),
        (["--update", "{npy}", "--reference-add", "{r2}"], "HDF5"),
        (["--update", "{missing}", "--reference-add", "{r2}"], "no such file"),
        (["--append-to", "{bias}", "-r", "{r}", "-o", "{r}"], "input"),
    ],
)
def test_cli_incremental_bad_usage(split_files, args, message):
    f = split_files
    bias = f["dir"] / "b.h5"
    run("bias", f["g1"], "-r", f["r"], "--alpha", 0.75, "--k", 8, "-o", bias, "-q")
    npy = f["dir"] / "b.npy"
    run("bias", f["g1"], "-r", f["r"], "--alpha", 0.75, "--k", 8, "-o", npy, "-q")
    names = {"bias": bias, "r": f["r"], "r2": f["r2"], "npy": npy, "missing": f["dir"] / "nope.h5"}
    res = run("bias", f["g2"], *[a.format(**names) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_appending_items_without_ids_to_a_file_with_ids_is_refused(split_files, hub_data):
    f = split_files
    inc = f["dir"] / "inc.h5"
    run("bias", f["g1"], "-r", f["r"], "--alpha", 0.75, "--k", 8, "-o", inc, "-q")
    np.save(f["dir"] / "new.npy", hub_data.gallery[200:])
    res = run("bias", f["dir"] / "new.npy", "-r", f["r"], "--append-to", inc)
    assert res.exit_code == 2 and "ids" in res.output


def test_load_stored_bias_reads_what_bias_wrote(split_files):
    f = split_files
    out = f["dir"] / "b.h5"
    run("bias", f["g"], "-r", f["r"], "--alpha", 0.75, "--k", 8, "-o", out, "-q")
    stored = load_stored_bias(out)
    assert stored.topk.shape == (300, 8) and stored.k == 8 and stored.alpha == 0.75 and stored.metric == "cosine"
    assert np.all(np.diff(stored.topk, axis=1) <= 0)  # descending
    np.testing.assert_allclose(stored.bias, 0.75 * stored.topk.astype(np.float64).mean(axis=1), atol=1e-6)


def test_update_refuses_an_approximate_bias_file(tmp_path):
    """A bias made with an approximate index holds approximate top-k: merging exact scores into it is refused."""
    from typer.testing import CliRunner

    from nnn_cli.cli.application import app

    rng = np.random.default_rng(5)
    g = rng.standard_normal((60, 8)).astype(np.float32)
    r = rng.standard_normal((400, 8)).astype(np.float32)
    new = rng.standard_normal((50, 8)).astype(np.float32)
    for name, arr in (("g", g), ("r", r), ("new", new)):
        np.save(tmp_path / f"{name}.npy", arr)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "bias",
            str(tmp_path / "g.npy"),
            "-r",
            str(tmp_path / "r.npy"),
            "-a",
            "0.5",
            "-k",
            "4",
            "--index",
            "hnsw",
            "-o",
            str(tmp_path / "b.h5"),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        [
            "bias",
            str(tmp_path / "g.npy"),
            "--update",
            str(tmp_path / "b.h5"),
            "--reference-add",
            str(tmp_path / "new.npy"),
        ],
    )
    assert res.exit_code == 2 and "approximate index" in res.stderr
