"""`nnn bias`, `nnn search`, `nnn eval` end to end, and every bad input of the contract."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli.application import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(res, *needles, code=2):
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], lines[0]


# ---------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------
def test_bias_search_eval_end_to_end(tmp_path, hub_files, hub_data):
    bias = tmp_path / "bias.h5"
    res = run(
        "bias",
        hub_files["gallery"],
        "--reference",
        hub_files["reference"],
        "--alpha",
        0.75,
        "--k",
        16,
        "-o",
        bias,
        "--json",
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_gallery"] == 300 and summary["k"] == 16
    with h5py.File(bias) as f:
        b = f["bias"][()]
        assert b.shape == (300,) and b.dtype == np.float32
        assert f.attrs["alpha"] == 0.75 and f.attrs["k"] == 16 and f.attrs["metric"] == "cosine"
        assert len(f.attrs["gallery_fingerprint"]) == 32 and list(f.attrs["reference_shape"]) == [2000, 32]
        assert f["ids"][0].decode() == "g0"

    out = tmp_path / "res.h5"
    res = run(
        "search", hub_files["queries"], "--gallery", hub_files["gallery"], "--bias", bias, "--top-k", 7, "-o", out
    )
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert f["indices"].shape == (600, 7) and f["indices"].dtype == np.int64
        assert f["scores"].dtype == np.float32 and f["ids"].shape == (600, 7)
        assert np.all(np.diff(f["scores"][()], axis=1) <= 0)
        assert f["ids"][0, 0].decode() == f"g{f['indices'][0, 0]}"

    res = run(
        "eval",
        "--queries",
        hub_files["queries"],
        "--gallery",
        hub_files["gallery"],
        "--truth",
        hub_files["truth"],
        "--bias",
        bias,
        "--json",
    )
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    for key in ("baseline", "nnn"):
        assert set(ev[key]) >= {"R@1", "R@5", "R@10", "hubness"}
        assert 0 <= ev[key]["R@1"] <= ev[key]["R@5"] <= ev[key]["R@10"] <= 100
    assert ev["nnn"]["R@1"] > ev["baseline"]["R@1"] + 10
    assert ev["nnn"]["hubness"]["max"] < ev["baseline"]["hubness"]["max"]

    # eval computing the bias itself gives the same figures
    res2 = run(
        "eval",
        "--queries",
        hub_files["queries"],
        "--gallery",
        hub_files["gallery"],
        "--truth",
        hub_files["truth"],
        "--reference",
        hub_files["reference"],
        "--alpha",
        0.75,
        "--k",
        16,
        "--json",
    )
    assert json.loads(res2.stdout)["nnn"]["R@1"] == ev["nnn"]["R@1"]

    # the rich table
    res = run(
        "eval",
        "--queries",
        hub_files["queries"],
        "--gallery",
        hub_files["gallery"],
        "--truth",
        hub_files["truth"],
        "--bias",
        bias,
    )
    assert res.exit_code == 0 and "R@1" in res.stdout and "baseline" in res.stdout and "NNN" in res.stdout


def test_jsonl_to_stdout(hub_files, tmp_path):
    res = run(
        "bias",
        hub_files["gallery_npy"],
        "-r",
        hub_files["reference_npy"],
        "-a",
        0.5,
        "-k",
        4,
        "-o",
        tmp_path / "b.npy",
        "-q",
    )
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "b.npy").shape == (300,)
    res = run("search", hub_files["queries"], "-g", hub_files["gallery"], "-b", tmp_path / "b.npy", "-n", 3, "-o", "-")
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 600
    rec = json.loads(lines[0])
    assert rec["query"] == 0 and rec["query_id"] == "q0" and len(rec["results"]) == 3
    assert rec["results"][0]["rank"] == 1 and rec["results"][0]["id"] == f"g{rec['results'][0]['index']}"


def test_multi_positive_truth_and_csv(tmp_path, hub_files, hub_data):
    pairs = np.stack([np.arange(600), hub_data.truth], 1)
    extra = np.stack([np.arange(0, 600, 2), (hub_data.truth[::2] + 1) % 300], 1)
    np.save(tmp_path / "pairs.npy", np.concatenate([pairs, extra]))
    with open(tmp_path / "pairs.csv", "w") as fh:
        fh.write("query,gallery\n")
        for q, g in np.concatenate([pairs, extra]):
            fh.write(f"q{q},g{g}\n")
    base = [
        "eval",
        "--queries",
        hub_files["queries"],
        "--gallery",
        hub_files["gallery"],
        "--reference",
        hub_files["reference"],
        "-a",
        0.75,
        "-k",
        16,
        "--json",
        "--truth",
    ]
    single = json.loads(run(*base, hub_files["truth"]).stdout)
    multi = json.loads(run(*base, tmp_path / "pairs.npy").stdout)
    csv = json.loads(run(*base, tmp_path / "pairs.csv").stdout)
    recall = lambda ev: {m: {k: ev[m][k] for k in ("R@1", "R@5", "R@10")} for m in ("baseline", "nnn")}  # noqa: E731
    assert recall(multi) == recall(csv)
    assert multi["nnn"]["R@10"] >= single["nnn"]["R@10"]


def test_params_file(tmp_path, hub_files):
    (tmp_path / "p.json").write_text(json.dumps({"alpha": 0.75, "k": 16}))
    a = run(
        "bias",
        hub_files["gallery"],
        "-r",
        hub_files["reference"],
        "--params",
        tmp_path / "p.json",
        "-o",
        tmp_path / "a.npy",
        "-q",
    )
    b = run(
        "bias", hub_files["gallery"], "-r", hub_files["reference"], "-a", 0.75, "-k", 16, "-o", tmp_path / "b.npy", "-q"
    )
    assert a.exit_code == b.exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_help_texts_have_examples():
    res = run("--help")
    assert res.exit_code == 0 and "bias" in res.stdout and "search" in res.stdout and "eval" in res.stdout
    for cmd in ("bias", "search", "eval"):
        res = run(cmd, "--help")
        assert res.exit_code == 0
        assert "Example" in res.stdout and f"nnn {cmd}" in res.stdout
        assert "--metric" in res.stdout


def test_module_entry_point_and_version():
    out = subprocess.run([sys.executable, "-m", "nnn_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("nnn ")


# ---------------------------------------------------------------------------
# bad inputs: exit 2, one line naming the problem, no output file
# ---------------------------------------------------------------------------
@pytest.fixture
def bad(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.standard_normal((20, 8)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "ref.npy", rng.standard_normal((30, 8)).astype(np.float32))
    (tmp_path / "notes.h5").write_text("this is not HDF5\n")
    with h5py.File(tmp_path / "full.h5", "w") as f:
        f["embeddings"] = rng.standard_normal((2000, 64)).astype(np.float32)
    data = (tmp_path / "full.h5").read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    np.save(tmp_path / "full.npy", good)
    raw = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(raw[: len(raw) - 100])
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["vectors"] = good
    np.save(tmp_path / "one_d.npy", good[:, 0])
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), dtype=np.float32))
    np.save(tmp_path / "dim5.npy", good[:, :5])
    nan = good.copy()
    nan[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    inf = good.copy()
    inf[4, 1] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    zero = good.copy()
    zero[7] = 0
    np.save(tmp_path / "zero.npy", zero)
    np.save(tmp_path / "ints.npy", np.ones((20, 8), dtype=np.int64))
    np.save(tmp_path / "bias_short.npy", np.zeros(19, dtype=np.float32))
    np.save(tmp_path / "bias_ok.npy", np.zeros(20, dtype=np.float32))
    np.save(tmp_path / "truth_oob.npy", np.array([0] * 19 + [20]))
    np.save(tmp_path / "truth_neg.npy", np.array([-1] + [0] * 19))
    np.save(tmp_path / "truth_len.npy", np.arange(10))
    np.save(tmp_path / "truth_ok.npy", np.arange(20))
    np.save(tmp_path / "truth_pairs_oob.npy", np.array([[0, 1], [25, 2]]))
    np.save(tmp_path / "truth_float.npy", np.full(20, 0.5))
    (tmp_path / "truth_ids.csv").write_text("query,gallery\n0,nope\n")
    return tmp_path


BIAS_CASES = [
    ("missing.npy", "ref.npy", [], "no such file"),
    ("notes.h5", "ref.npy", [], "not a readable HDF5"),
    ("trunc.h5", "ref.npy", [], "trunc.h5"),
    ("trunc.npy", "ref.npy", [], "trunc.npy"),
    ("other.h5", "ref.npy", [], "no dataset 'embeddings'"),
    ("other.h5:nothere", "ref.npy", [], "no dataset 'nothere'"),
    ("one_d.npy", "ref.npy", [], "2-D"),
    ("empty.npy", "ref.npy", [], "empty"),
    ("dim5.npy", "ref.npy", [], "dimension mismatch"),
    ("nan.npy", "ref.npy", [], "row 3"),
    ("inf.npy", "ref.npy", [], "row 4"),
    ("zero.npy", "ref.npy", [], "row 7 is a zero vector"),
    ("good.npy", "zero.npy", [], "zero vector"),
    ("ints.npy", "ref.npy", [], "not floating point"),
    ("good.npy", "ref.npy", ["--k", "0"], "k must be"),
    ("good.npy", "ref.npy", ["--k", "31"], "ref.npy (30 rows)"),
    ("good.npy", "ref.npy", ["--alpha", "-1"], "alpha"),
]


@pytest.mark.parametrize("gallery,reference,extra,needle", BIAS_CASES)
def test_bias_bad_inputs(bad, gallery, reference, extra, needle):
    opts = {"--alpha": "0.5", "--k": "4"}
    for i in range(0, len(extra), 2):
        opts[extra[i]] = extra[i + 1]
    flat = [x for kv in opts.items() for x in kv]
    out = bad / "out.h5"
    res = run(
        "bias",
        bad / gallery if ":" not in gallery else f"{bad / gallery.split(':')[0]}:{gallery.split(':')[1]}",
        "--reference",
        bad / reference,
        "-o",
        out,
        *flat,
    )
    assert_clean_error(res, needle)
    assert not out.exists()
    assert not [p for p in os.listdir(bad) if p.endswith(".tmp")]


def test_bias_output_folder_missing_and_input_overwrite(bad):
    res = run("bias", bad / "good.npy", "-r", bad / "ref.npy", "-a", 0.5, "-k", 2, "-o", bad / "nope" / "b.h5")
    assert_clean_error(res, "does not exist")
    res = run("bias", bad / "good.npy", "-r", bad / "ref.npy", "-a", 0.5, "-k", 2, "-o", bad / "good.npy")
    assert_clean_error(res, "is also an input")
    assert np.load(bad / "good.npy").shape == (20, 8)


def test_bias_needs_alpha_and_k(bad):
    res = run("bias", bad / "good.npy", "-r", bad / "ref.npy", "-o", bad / "b.h5", "-k", 3)
    assert_clean_error(res, "--alpha")
    (bad / "p.json").write_text("{not json")
    res = run("bias", bad / "good.npy", "-r", bad / "ref.npy", "-o", bad / "b.h5", "--params", bad / "p.json")
    assert_clean_error(res, "not valid JSON")


SEARCH_EVAL_CASES = [
    ("search", "bias_short.npy", None, "19 biases"),
    ("eval", "bias_short.npy", "truth_ok.npy", "19 biases"),
    ("eval", "bias_ok.npy", "truth_oob.npy", "gallery row 20 out of range"),
    ("eval", "bias_ok.npy", "truth_neg.npy", "gallery row -1 out of range"),
    ("eval", "bias_ok.npy", "truth_len.npy", "10 entries but there are 20 queries"),
    ("eval", "bias_ok.npy", "truth_pairs_oob.npy", "query row 25 out of range"),
    ("eval", "bias_ok.npy", "truth_float.npy", "integers"),
    ("eval", "bias_ok.npy", "truth_ids.csv", "the gallery file has no ids"),
    ("eval", "bias_ok.npy", "missing_truth.npy", "no such file"),
]


@pytest.mark.parametrize("cmd,bias,truth,needle", SEARCH_EVAL_CASES)
def test_search_eval_bad_inputs(bad, cmd, bias, truth, needle):
    out = bad / "res.h5"
    if cmd == "search":
        res = run("search", bad / "good.npy", "-g", bad / "good.npy", "-b", bad / bias, "-o", out)
    else:
        res = run("eval", "-Q", bad / "good.npy", "-g", bad / "good.npy", "-b", bad / bias, "-t", bad / truth)
    assert_clean_error(res, needle)
    assert not out.exists()


def test_search_dimension_mismatch(bad):
    res = run("search", bad / "dim5.npy", "-g", bad / "good.npy", "-o", bad / "r.h5")
    assert_clean_error(res, "dimension mismatch")
    assert not (bad / "r.h5").exists()


def test_bias_metric_mismatch_refused(bad):
    assert (
        run(
            "bias",
            bad / "good.npy",
            "-r",
            bad / "ref.npy",
            "-a",
            0.5,
            "-k",
            2,
            "-o",
            bad / "b.h5",
            "--metric",
            "ip",
            "-q",
        ).exit_code
        == 0
    )
    res = run("search", bad / "good.npy", "-g", bad / "good.npy", "-b", bad / "b.h5", "-o", bad / "r.h5")
    assert_clean_error(res, "metric")


def test_real_process_exit_code_and_no_traceback(bad):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnn_cli",
            "bias",
            str(bad / "nan.npy"),
            "-r",
            str(bad / "ref.npy"),
            "-a",
            "0.5",
            "-k",
            "2",
            "-o",
            str(bad / "o.h5"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_rich_width_in_pipes_is_120_unless_columns_or_terminal(monkeypatch):
    import io

    from nnn_cli.cli.render import _pipe_width

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("COLUMNS", raising=False)
    assert _pipe_width(io.StringIO()) == 120
    assert _pipe_width(Tty()) is None
    monkeypatch.setenv("COLUMNS", "200")
    assert _pipe_width(io.StringIO()) is None  # rich reads COLUMNS itself
