"""Out-of-core inputs: .npy shard folders, HDF5 blocks and --memory-budget give the in-memory results exactly."""

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli import open_embeddings
from nnn_cli.cli.application import app
from nnn_cli.core.nnn import compute_bias, reference_topk
from nnn_cli.core.topk import DATABASE_TILE, QUERY_TILE
from nnn_cli.data.shards import open_shard_folder
from nnn_cli.errors import InputError, MismatchError, ParameterError
from nnn_cli.scale.budget import BlockPlan, parse_memory_budget, plan_blocks
from nnn_cli.scale.streaming import streamed_bias, streamed_reference_topk

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def big():
    """Enough rows to span several GEMM tiles on both sides (d small to stay fast)."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal((2 * QUERY_TILE + 77, 24)).astype(np.float32)
    r = rng.standard_normal((2 * DATABASE_TILE + 501, 24)).astype(np.float32)
    return g, r


def write_shards(folder, arr, sizes, prefix=""):
    folder.mkdir()
    start = 0
    for i, size in enumerate(sizes):
        np.save(folder / f"{prefix}{i}.npy", arr[start : start + size])
        start += size
    assert start == len(arr)
    return folder


def small_plan(k):
    return BlockPlan(gallery_rows=QUERY_TILE, reference_rows=DATABASE_TILE, fixed_bytes=0, per_gallery_row_bytes=0)


# --- shard folders -----------------------------------------------------------
def test_shard_folder_numeric_order_and_ids(tmp_path):
    arr = np.arange(12 * 3, dtype=np.float32).reshape(12, 3) + 1
    folder = tmp_path / "emb"
    folder.mkdir()
    # 10 sorts before 2 as text; numeric order must win
    parts = {0: arr[0:2], 1: arr[2:3], 2: arr[3:5], 10: arr[5:12]}
    for i, part in parts.items():
        np.save(folder / f"img_emb_{i}.npy", part)
    (folder / "ids.txt").write_text("\n".join(f"id{i}" for i in range(12)) + "\n")
    src = open_embeddings(folder)
    assert src.shape == (12, 3) and src.kind == "shards"
    np.testing.assert_array_equal(src.read("ip"), arr)
    assert list(src.ids()) == [f"id{i}" for i in range(12)]
    blocks = list(src.iter_blocks("ip", block_rows=4))  # blocks that straddle shard boundaries
    assert [s for s, _ in blocks] == [0, 4, 8]
    np.testing.assert_array_equal(np.vstack([b for _, b in blocks]), arr)
    np.save(tmp_path / "single.npy", arr)
    assert src.fingerprint() == open_embeddings(tmp_path / "single.npy").fingerprint()


def test_shard_folder_bad_layouts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no .npy shards"):
        open_shard_folder(empty)
    unnumbered = write_shards(tmp_path / "u", np.ones((2, 3), np.float32), [2])
    (unnumbered / "0.npy").rename(unnumbered / "part.npy")
    with pytest.raises(InputError, match="no number"):
        open_shard_folder(unnumbered)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "0.npy", np.ones((2, 3), np.float32))
    np.save(mixed / "1.npy", np.ones((2, 4), np.float32))
    with pytest.raises(MismatchError, match="different dimensions"):
        open_shard_folder(mixed)
    ids_short = write_shards(tmp_path / "ids", np.ones((4, 3), np.float32), [2, 2])
    (ids_short / "ids.txt").write_text("a\nb\n")
    with pytest.raises(MismatchError, match="2 ids"):
        open_shard_folder(ids_short)


# --- streamed results are identical ----------------------------------------
def test_streamed_topk_identical_to_in_memory(tmp_path, big):
    g, r = big
    k = 9
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["embeddings"] = g
    ref_folder = write_shards(tmp_path / "ref", r, [5000, 17, 20000, len(r) - 25017])
    g_src, r_src = open_embeddings(tmp_path / "g.h5"), open_embeddings(ref_folder)
    # the same arrays fully loaded (and normalised the library's way), one in-memory top-k
    in_memory = reference_topk(g_src.read("cosine"), r_src.read("cosine"), k)
    np.testing.assert_allclose(
        in_memory,
        reference_topk(g / np.linalg.norm(g, axis=1, keepdims=True), r / np.linalg.norm(r, axis=1, keepdims=True), k),
        atol=1e-6,
    )
    streamed = streamed_reference_topk(g_src, r_src, k, "cosine", small_plan(k))
    assert np.array_equal(streamed, in_memory)
    bias, topk = streamed_bias(g_src, r_src, 0.5, k, "cosine", small_plan(k), keep_topk=True)
    assert np.array_equal(topk, in_memory)
    expected = compute_bias(g_src.read(), r_src.read(), 0.5, k)
    assert np.array_equal(bias, expected)


def test_cli_memory_budget_identical(tmp_path, big):
    g, r = big
    np.save(tmp_path / "g.npy", g)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f.create_dataset("embeddings", data=r.astype(np.float16), chunks=(1000, 24))
    common = ["--reference", tmp_path / "r.h5", "--alpha", "0.7", "--k", "5", "-q"]
    res = run("bias", tmp_path / "g.npy", *common, "-o", tmp_path / "mem.h5")
    assert res.exit_code == 0, res.output
    res = run("bias", tmp_path / "g.npy", *common, "-o", tmp_path / "budget.h5", "--memory-budget", "300MB", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["bias_mode"] == "exact-streamed"
    with h5py.File(tmp_path / "mem.h5") as a, h5py.File(tmp_path / "budget.h5") as b:
        assert np.array_equal(a["bias"][()], b["bias"][()])
        assert b.attrs["bias_mode"] == "exact-streamed"


# --- budgets -------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("1GB", 1024**3),
        ("512MB", 512 * 1024**2),
        ("1.5g", int(1.5 * 1024**3)),
        ("300MiB", 300 * 1024**2),
        (" 2 GB ", 2 * 1024**3),
        (None, None),
    ],
)
def test_parse_memory_budget(text, expected):
    assert parse_memory_budget(text) == expected


@pytest.mark.parametrize("text", ["lots", "1XB", "-1GB", "GB", "10MB", "1e9"])
def test_parse_memory_budget_bad(text):
    with pytest.raises(ParameterError):
        parse_memory_budget(text)


def test_plan_blocks_fits_budget():
    budget = parse_memory_budget("1GB")
    plan = plan_blocks(budget, 512, 128, 10**7)
    assert plan.gallery_rows % QUERY_TILE == 0 and plan.reference_rows % DATABASE_TILE == 0
    assert plan.fixed_bytes + plan.gallery_rows * plan.per_gallery_row_bytes <= budget
    assert plan_blocks(budget, 512, 128, 10).gallery_rows == QUERY_TILE  # never more than the gallery needs


@pytest.mark.parametrize("value", ["lots", "12", "0.1GB"])
def test_cli_bad_budget_exit_2(tmp_path, hub_files, value):
    out = tmp_path / "b.h5"
    res = run(
        "bias",
        hub_files["gallery"],
        "--reference",
        hub_files["reference"],
        "--alpha",
        "0.5",
        "--k",
        "4",
        "-o",
        out,
        "--memory-budget",
        value,
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--memory-budget" in lines[0]
    assert not out.exists()


def test_npy_block_reads_match_array(tmp_path):
    from nnn_cli.data.shards import NpyRows

    arr = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float16)
    np.save(tmp_path / "c.npy", arr)
    np.save(tmp_path / "f.npy", np.asfortranarray(arr))
    for name in ("c.npy", "f.npy"):
        with NpyRows(tmp_path / name) as rows:
            assert len(rows) == 50
            np.testing.assert_array_equal(rows[3:41], arr[3:41])
            np.testing.assert_array_equal(rows[45:99], arr[45:])
        np.testing.assert_array_equal(open_embeddings(tmp_path / name).read("ip"), arr.astype(np.float32))


def test_cli_shard_folder_input_with_ids(tmp_path, hub_data):
    folder = write_shards(tmp_path / "gallery_emb", hub_data.gallery, [100, 100, 100])
    (folder / "ids.txt").write_text("\n".join(f"item{i}" for i in range(300)) + "\n")
    np.save(tmp_path / "ref.npy", hub_data.reference)
    out_dir, out_file = tmp_path / "dir.h5", tmp_path / "file.h5"
    np.save(tmp_path / "gallery.npy", hub_data.gallery)
    for src, out in ((folder, out_dir), (tmp_path / "gallery.npy", out_file)):
        res = run("bias", src, "--reference", tmp_path / "ref.npy", "--alpha", "0.5", "--k", "4", "-o", out, "-q")
        assert res.exit_code == 0, res.output
    with h5py.File(out_dir) as a, h5py.File(out_file) as b:
        assert np.array_equal(a["bias"][()], b["bias"][()])
        assert [x.decode() for x in a["ids"][:3]] == ["item0", "item1", "item2"]


# --- sampled rows and hash-only fingerprints ---------------------------------
@pytest.mark.parametrize("layout", ["h5", "npy16", "shards"])
def test_take_rows_equals_full_read_and_fingerprints_agree(tmp_path, layout):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1000, 6)).astype(np.float32)
    if layout == "h5":
        path = tmp_path / "x.h5"
        with h5py.File(path, "w") as f:
            f["embeddings"] = x
    elif layout == "npy16":
        path = tmp_path / "x.npy"
        np.save(path, x.astype(np.float16))
    else:
        path = write_shards(tmp_path / "x", x, [300, 1, 699])
    pos = np.array([0, 5, 299, 300, 301, 998, 999])
    for metric in ("cosine", "ip"):
        src = open_embeddings(path)
        np.testing.assert_array_equal(src.take_rows(pos, metric, block_rows=128), src.read(metric)[pos])
    hash_only = open_embeddings(path).fingerprint()  # one pass that only hashes
    src = open_embeddings(path)
    src.read("cosine")  # recorded during a full read
    assert src.fingerprint() == hash_only
    src.read("ip")  # later passes skip hashing, keep the value
    assert src.fingerprint() == hash_only == open_embeddings(path).fingerprint_rows(0, 1000)


def test_take_rows_reports_the_bad_rows_own_number(tmp_path):
    x = np.ones((500, 4), dtype=np.float32)
    x[321] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match="row 321 contains NaN"):
        open_embeddings(tmp_path / "x.npy").take_rows(np.array([3, 321, 400]), block_rows=100)


def test_the_sketch_beside_the_exact_bias_matches_and_leaves_nothing_behind(tmp_path, big):
    """The bias file's leak sketch is computed beside the exact bias (its own reads, one BLAS limit held by
    the step): the codes equal the sketch of the reference computed alone; on a failure mid-step the sketch
    thread has finished and BLAS is back to its own thread count."""
    import threading
    import time

    from threadpoolctl import threadpool_info

    from nnn_cli.core.leak import sketch_codes

    def numpy_blas():
        return [i["num_threads"] for i in threadpool_info() if "numpy" in i["filepath"]]

    g, r = big
    np.save(tmp_path / "g.npy", g)
    np.save(tmp_path / "r.npy", r)
    before = numpy_blas()
    out = tmp_path / "b.h5"
    res = run("bias", tmp_path / "g.npy", "-r", tmp_path / "r.npy", "--alpha", 1, "--k", 8, "--metric", "ip", "-o", out)
    assert res.exit_code == 0, res.output
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["leak_sketch_codes"][()], sketch_codes(r))
        np.testing.assert_array_equal(f["bias"][()], compute_bias(g, r, 1.0, 8))
    bad = g.copy()
    bad[-1, 3] = np.nan  # found when the gallery is read, while the sketch of the reference is under way
    np.save(tmp_path / "bad.npy", bad)
    res = run("bias", tmp_path / "bad.npy", "-r", tmp_path / "r.npy", "--alpha", 1, "--k", 8, "-o", tmp_path / "x.h5")
    assert res.exit_code == 2 and "NaN" in res.output
    assert not (tmp_path / "x.h5").exists()
    for _ in range(500):  # the readers end at their next item (at most a few seconds on a loaded machine)
        if not [t for t in threading.enumerate() if t.name in ("nnn-beside", "nnn-read-ahead")]:
            break
        time.sleep(0.02)
    assert not [t for t in threading.enumerate() if t.name in ("nnn-beside", "nnn-read-ahead")]
    assert numpy_blas() == before


def test_a_npy_bias_computes_no_sketch_it_would_drop(tmp_path, big, monkeypatch):
    """A ``.npy`` bias holds the bias alone: the leak sketch (10% of the exact step's GEMM work at 5k x 118k)
    is not computed for it; an HDF5 bias still gets it."""
    import nnn_cli.jobs.protocol as protocol

    g, r = big
    np.save(tmp_path / "g.npy", g)
    np.save(tmp_path / "r.npy", r)
    calls = []
    real = protocol.sketch_codes
    monkeypatch.setattr(protocol, "sketch_codes", lambda rows: calls.append(len(rows)) or real(rows))
    args = ("bias", tmp_path / "g.npy", "-r", tmp_path / "r.npy", "--alpha", 1, "--k", 8, "--metric", "ip", "-o")
    res = run(*args, tmp_path / "b.npy")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), compute_bias(g, r, 1.0, 8))
    assert calls == []
    res = run(*args, tmp_path / "b.h5")
    assert res.exit_code == 0, res.output
    assert sum(calls) == len(r)
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert f["leak_sketch_codes"].shape == (len(r), 64)
