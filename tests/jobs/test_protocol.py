"""The paper's protocol end to end: one leak check on every path, the reference ablation, per-method
parameter files, the method registry and the typed job API."""

import ast
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli import jobs
from nnn_cli.cli.application import app
from nnn_cli.core import methods as registry
from nnn_cli.core.leak import check_against_sketch, find_leaks, reference_sketch
from nnn_cli.core.nnn import compute_bias
from nnn_cli.core.protocol import reference_subsample
from nnn_cli.errors import ParameterError

runner = CliRunner()


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_h5(path, rows, ids=None):
    with h5py.File(path, "w") as f:
        f["embeddings"] = np.asarray(rows, dtype=np.float32)
        if ids is not None:
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
    return path


def leaked_reference(hub_data, tmp_path, rows=slice(0, 50), noise=1e-4, ids=False):
    """The reference plus test queries re-normalised in float64 with small noise (no ids in common unless asked)."""
    q = hub_data.queries[rows].astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True) + noise * np.random.default_rng(0).standard_normal(q.shape)
    ref = np.concatenate([hub_data.reference, q.astype(np.float32)])
    names = [f"r{i}" for i in range(len(hub_data.reference))]
    names += [f"q{i}" if ids else f"x{i}" for i in range(len(q))]
    return write_h5(tmp_path / "leaky.h5", ref, names)


# ---------------------------------------------------------------------------
# The leak check itself
# ---------------------------------------------------------------------------
def test_near_duplicates_caught_that_exact_equality_missed(hub_data):
    q = hub_data.queries[:100].astype(np.float64)
    renorm = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    noisy = renorm + np.float32(1e-4) * np.random.default_rng(1).standard_normal(renorm.shape).astype(np.float32)
    for copy in (renorm, noisy, renorm.astype(np.float16).astype(np.float32)):
        ref = np.concatenate([hub_data.reference, copy[:30]])
        report = find_leaks(hub_data.queries, ref)
        assert report.near_duplicates == 30 and report.rows[:3] == [0, 1, 2] and report.by_ids is None
        streamed = find_leaks(hub_data.queries, (ref[s : s + 700] for s in range(0, len(ref), 700)))
        assert streamed == report  # a streamed reference (blocks) gives the same report
    clean = find_leaks(hub_data.queries, hub_data.reference)
    assert clean.n_leaked == 0 and clean.warning is None
    with pytest.raises(ParameterError, match="--strict"):
        find_leaks(hub_data.queries, np.concatenate([hub_data.reference, noisy[:1]])).raise_if(True)


def test_leaks_by_id_counted_separately(hub_data):
    q_ids = np.array([f"q{i}" for i in range(len(hub_data.queries))])
    r_ids = np.array([f"r{i}" for i in range(len(hub_data.reference))])
    r_ids[[3, 7]] = ["q10", "q20"]  # same ids, different rows
    report = find_leaks(hub_data.queries, hub_data.reference, q_ids, r_ids, what="test queries")
    assert report.by_ids == 2 and report.near_duplicates == 0 and report.n_leaked == 2
    assert report.examples == ["q10", "q20"] and "2 by id" in report.warning


def test_sketch_screen_matches_exact_check(hub_data):
    rng = np.random.default_rng(2)
    q = unit(hub_data.queries)
    copies = q[:40] + np.float32(1e-4) * rng.standard_normal(q[:40].shape).astype(np.float32)
    ref = np.concatenate([hub_data.reference, copies])
    sketch = reference_sketch(ref, [f"r{i}" for i in range(len(ref))])
    assert sketch["codes"].shape == (len(ref), 64) and sketch["codes"].dtype == np.uint8
    report = check_against_sketch(q, sketch, [f"q{i}" for i in range(len(q))])
    assert report.near_duplicates == 40 and report.rows == list(range(10)) and report.source == "sketch"
    # distinct rows at cosine 0.95 (and the clean data) are not flagged
    far = unit(q[:200] + 0.33 * unit(rng.standard_normal(q[:200].shape)))
    assert 0.9 < float(np.median((far * q[:200]).sum(1))) < 0.97
    assert check_against_sketch(far, reference_sketch(q[:200])).near_duplicates <= 2
    assert check_against_sketch(q, reference_sketch(hub_data.reference)).n_leaked == 0


# ---------------------------------------------------------------------------
# Every path: tune, bias --queries, eval (--reference and --bias), attribute-bias
# ---------------------------------------------------------------------------
def test_tune_warns_on_near_duplicates_and_refuses_under_strict(hub_files, hub_data, tmp_path):
    leaky = leaked_reference(hub_data, tmp_path)
    args = ["tune", "-Q", str(hub_files["queries"]), "-g", str(hub_files["gallery"]), "-t", str(hub_files["truth"])]
    args += ["-r", str(leaky), "-o", str(tmp_path / "p.json"), "--alphas", "0.75", "--ks", "16"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "50 of 600 tuning queries" in res.stderr and "50 as near-duplicate" in res.stderr
    assert json.loads((tmp_path / "p.json").read_text())["leak"]["near_duplicates"] == 50
    res = runner.invoke(app, [*args[:-6], "-r", str(leaky), "-o", str(tmp_path / "p2.json"), "--strict"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and not (tmp_path / "p2.json").exists()


def test_bias_with_queries_and_eval_with_bias_check_leaks(hub_files, hub_data, tmp_path):
    leaky = leaked_reference(hub_data, tmp_path, ids=True)
    bias = tmp_path / "b.h5"
    base = ["bias", str(hub_files["gallery"]), "-r", str(leaky), "--alpha", "0.75", "--k", "16"]
    res = runner.invoke(app, [*base, "-o", str(bias), "-Q", str(hub_files["queries"])])
    assert res.exit_code == 0 and "50 of 600 queries" in res.stderr and "50 by id" in res.stderr
    res = runner.invoke(app, [*base, "-o", str(tmp_path / "b2.h5"), "-Q", str(hub_files["queries"]), "--strict"])
    assert res.exit_code == 2 and not (tmp_path / "b2.h5").exists()
    with h5py.File(bias) as f:
        assert f["leak_sketch_codes"].shape == (len(hub_data.reference) + 50, 64)
        assert f.attrs["leak_sketch_rows"] == len(hub_data.reference) + 50 and "leak_sketch_id_hashes" in f
    ev = ["eval", "-Q", str(hub_files["queries"]), "-g", str(hub_files["gallery"]), "-t", str(hub_files["truth"])]
    res = runner.invoke(app, [*ev, "--bias", str(bias), "--json"])
    leak = json.loads(res.stdout)["leak"]
    assert res.exit_code == 0 and leak["source"] == "sketch" and leak["n_leaked"] == 50 and leak["by_ids"] == 50
    res = runner.invoke(app, [*ev, "--bias", str(bias)])
    assert "warning: 50 of 600 test queries" in res.stderr and "checked against the sketch" in res.stderr
    assert runner.invoke(app, [*ev, "--bias", str(bias), "--strict"]).exit_code == 2
    # the exact check when the reference is given
    res = runner.invoke(app, [*ev, "-r", str(leaky), "--alpha", "0.75", "--k", "16", "--json"])
    assert (
        json.loads(res.stdout)["leak"]["near_duplicates"] == 50
        and json.loads(res.stdout)["leak"]["source"] == "reference"
    )


def test_attribute_bias_checks_leaks(hub_files, hub_data, tmp_path):
    leaky = leaked_reference(hub_data, tmp_path)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.where(np.arange(len(hub_data.gallery)) % 2 == 0, 1, -1))
    args = ["attribute-bias", "-Q", str(hub_files["queries"]), "-g", str(hub_files["gallery"]), "--labels", str(labels)]
    args += ["-r", str(leaky), "--alpha", "0.75", "--k", "16", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["leak"]["near_duplicates"] == 50
    assert "50 of 600 queries" in runner.invoke(app, args[:-1]).stderr
    assert runner.invoke(app, [*args, "--strict"]).exit_code == 2


def test_eval_bias_with_params_alpha_or_k_refused(hub_files, tmp_path):
    bias = tmp_path / "b.h5"
    jobs.bias(hub_files["gallery"], reference=hub_files["reference"], output=bias, alpha=0.75, k=16)
    (tmp_path / "p.json").write_text(json.dumps({"alpha": 0.5, "k": 8}))
    ev = ["eval", "-Q", str(hub_files["queries"]), "-g", str(hub_files["gallery"]), "-t", str(hub_files["truth"])]
    for extra in (["--params", str(tmp_path / "p.json")], ["--alpha", "0.5"], ["--k", "8"]):
        res = runner.invoke(app, [*ev, "--bias", str(bias), *extra])
        assert res.exit_code == 2 and "--bias already fixes alpha and k" in res.stderr and res.stderr.count("\n") == 1


# ---------------------------------------------------------------------------
# The reference ablation
# ---------------------------------------------------------------------------
def test_reference_fraction_on_bias_and_eval_applied_from_params(hub_files, hub_data, tmp_path):
    params = tmp_path / "p.json"
    res = jobs.tune(hub_files["gallery"], hub_files["reference"], params, queries=hub_files["queries"],
                    truth=hub_files["truth"], alphas=[0.75], ks=[8, 16], reference_fraction=0.3, seed=4)  # fmt: skip
    assert res.document["reference_fraction"] == 0.3 and res.document["n_reference_used"] == 600
    bias = tmp_path / "b.h5"
    out = jobs.bias(hub_files["gallery"], reference=hub_files["reference"], output=bias, params=params)
    assert out.summary["n_reference_used"] == 600 and "using 600 of 2000" in out.notes[0]
    sub = hub_data.reference[reference_subsample(2000, 0.3, 4)]
    want = compute_bias(unit(hub_data.gallery), unit(sub), res.document["alpha"], res.document["k"])
    with h5py.File(bias) as f:
        np.testing.assert_allclose(f["bias"][()], want, rtol=1e-5, atol=1e-6)
        assert f.attrs["reference_fraction"] == 0.3 and f.attrs["reference_seed"] == 4 and f.attrs["n_reference"] == 600
    with pytest.raises(ParameterError, match="tuned with --reference-fraction 0.3 --seed 4"):
        jobs.bias(hub_files["gallery"], reference=hub_files["reference"], output=tmp_path / "x.h5", params=params,
                  reference_fraction=0.5)  # fmt: skip
    assert not (tmp_path / "x.h5").exists()
    ev = jobs.evaluate(hub_files["queries"], hub_files["gallery"], hub_files["truth"], reference=hub_files["reference"],
                       params=params)  # fmt: skip
    from_bias = jobs.evaluate(hub_files["queries"], hub_files["gallery"], hub_files["truth"], bias=bias)
    assert ev.document["n_reference_used"] == 600 and ev.recall("nnn") == from_bias.recall("nnn")
    res = runner.invoke(app, ["eval", "-Q", str(hub_files["queries"]), "-g", str(hub_files["gallery"]), "-t",
                              str(hub_files["truth"]), "-r", str(hub_files["reference"]), "--params", str(params),
                              "--reference-fraction", "0.5"])  # fmt: skip
    assert res.exit_code == 2 and "--reference-fraction 0.3 --seed 4" in res.stderr


def test_reference_curve_script_runs_on_sample_data(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "bench" / "bench_reference_fraction.py"), "--fractions", "1,0.5",
                          "--seeds", "1", "--json"], capture_output=True, text=True, cwd=root, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["fraction"] for r in rows] == [1.0, 0.5] and all(r["nnn_R@1"] > r["baseline_R@1"] for r in rows)


# ---------------------------------------------------------------------------
# Per-method parameter files and the registry
# ---------------------------------------------------------------------------
def test_method_params_files_each_method_keeps_its_values(hub_files, tmp_path):
    (tmp_path / "db.json").write_text(json.dumps({"method": "dbnorm", "best": {"db_beta1": 0.0, "db_beta2": 20.0}}))
    (tmp_path / "dis.json").write_text(json.dumps({"method": "dualdis", "best": {"db_beta1": 2.0, "db_beta2": 7.0}}))
    (tmp_path / "both.json").write_text(json.dumps({"methods": {"is": {"qb_beta": 5.0}, "qbnorm": {"qb_beta": 9.0}}}))
    doc = jobs.evaluate(hub_files["queries"], hub_files["gallery"], hub_files["truth"], reference=hub_files["reference"],
                        methods=["baseline", "dbnorm", "dbnorm_dis", "is", "qbnorm"],
                        method_params=[tmp_path / "db.json", tmp_path / "dis.json", tmp_path / "both.json"]).document  # fmt: skip
    assert doc["dbnorm"]["params"] == {"db_beta1": 0.0, "db_beta2": 20.0}
    assert doc["dbnorm_dis"]["params"] == {"db_beta1": 2.0, "db_beta2": 7.0, "activation_k": 1.0}
    assert doc["is"]["params"] == {"qb_beta": 5.0} and doc["qbnorm"]["params"]["qb_beta"] == 9.0
    (tmp_path / "bad.json").write_text(json.dumps({"method": "dbnorm", "best": {"qb_beta": 3.0}}))
    with pytest.raises(Exception, match="dbnorm"):
        jobs.evaluate(hub_files["queries"], hub_files["gallery"], hub_files["truth"], reference=hub_files["reference"],
                      methods=["dbnorm"], method_params=[tmp_path / "bad.json"])  # fmt: skip


@pytest.fixture
def registered_method():
    def rank_far(data, values):  # rank by distance from the reference mean, scaled by gamma: a toy method
        shift = np.float32(values["gamma"]) * data.reference.mean(axis=0).astype(np.float32)
        scores = (data.queries - shift) @ data.gallery.T
        return np.argsort(-scores, axis=1, kind="stable")[:, : data.top_k]

    registry.register(registry.ComparisonMethod("toy", "Toy method", params={"gamma": 0.5}, rank=rank_far,
                                                grid={"gamma": (0.0, 0.5, 1.0)}))  # fmt: skip
    yield "toy"
    registry.unregister("toy")


def test_registered_method_appears_everywhere(registered_method, hub_files, tmp_path):
    ev = ["eval", "-Q", str(hub_files["queries"]), "-g", str(hub_files["gallery"]), "-t", str(hub_files["truth"]),
          "-r", str(hub_files["reference"])]  # fmt: skip
    res = runner.invoke(app, [*ev, "--methods", "baseline,toy", "--json", "--report", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["toy"]["params"] == {"gamma": 0.5} and "R@1" in doc["toy"]
    assert "Toy method" in (tmp_path / "r.html").read_text()
    res = runner.invoke(app, [*ev, "--methods", "baseline,toy"])
    assert res.exit_code == 0 and "Toy method" in res.stdout
    assert "toy" in jobs.eval.tunable_methods()
    res = runner.invoke(app, ["tune", "--method", "toy", *ev[1:], "-o", str(tmp_path / "toy.json"), "--json"])
    assert res.exit_code == 0, res.output
    tuned = json.loads((tmp_path / "toy.json").read_text())
    assert tuned["method"] == "toy" and len(tuned["grid"]) == 3 and set(tuned["best"]) == {"gamma"}
    res = runner.invoke(
        app, [*ev, "--methods", "baseline,toy", "--method-params", str(tmp_path / "toy.json"), "--json"]
    )
    assert json.loads(res.stdout)["toy"]["params"]["gamma"] == tuned["best"]["gamma"]
    registry.unregister("toy")
    res = runner.invoke(app, [*ev, "--methods", "baseline,toy"])
    assert res.exit_code == 2 and "unknown method 'toy'" in res.stderr
    res = runner.invoke(app, ["tune", "--method", "toy", *ev[1:], "-o", str(tmp_path / "t2.json")])
    assert res.exit_code == 2 and "unknown --method 'toy'" in res.stderr


# ---------------------------------------------------------------------------
# The typed API: one test per job through Python
# ---------------------------------------------------------------------------
def test_tune_typed_api(hub_files, tmp_path):
    res = jobs.tune(hub_files["gallery"], hub_files["reference"], tmp_path / "p.json", queries=hub_files["queries"],
                    truth=hub_files["truth"], alphas=[0.5, 0.75], ks=[8, 16])  # fmt: skip
    assert res.document["alpha"] in (0.5, 0.75) and res.document["k"] in (8, 16) and len(res.grid.grid) == 4
    assert (
        res.to_json()
        == json.loads((tmp_path / "p.json").read_text())
        == {k: v for k, v in res.summary.items() if k != "message"}
    )
    assert all(not hasattr(v, "__dict__") for v in res.summary.values())  # no live objects
    with pytest.raises(ParameterError, match="list of numbers"):
        jobs.tune(hub_files["gallery"], hub_files["reference"], tmp_path / "q.json", alphas="0.5,0.75")
    with pytest.raises(ParameterError, match="k must be an integer"):
        jobs.tune(hub_files["gallery"], hub_files["reference"], tmp_path / "q.json", ks=[2.5])
    sweep = jobs.tune(hub_files["gallery"], hub_files["reference"], tmp_path / "dn.json", queries=hub_files["queries"],
                      truth=hub_files["truth"], method="dn", method_grid={"dn_lambda": [0.0, 0.25]})  # fmt: skip
    assert sweep.document["method"] == "dn" and len(sweep.document["grid"]) == 2


def test_eval_typed_api(hub_files):
    req = jobs.eval.EvalRequest(hub_files["queries"], hub_files["gallery"], hub_files["truth"],
                                reference=hub_files["reference"], alpha=0.75, k=16, methods=("nnn", "dualis"))  # fmt: skip
    assert req.methods == ("baseline", "nnn", "dbnorm")
    res = jobs.eval.run_evaluate(req)
    assert res.summary is res.to_json() and res.recall("nnn") > res.recall("baseline")
    assert set(res.runs) == {"baseline", "nnn", "dbnorm"} and res.runs["nnn"].topk.shape == (600, 10)
    with pytest.raises(ParameterError, match="unknown method"):
        jobs.eval.EvalRequest(hub_files["queries"], hub_files["gallery"], hub_files["truth"], methods=["bogus"])


def test_attribute_typed_api(hub_files, hub_data, tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.where(np.arange(len(hub_data.gallery)) % 2 == 0, 1, -1))
    req = jobs.attribute.AttributeRequest(hub_files["queries"], hub_files["gallery"], labels,
                                          reference=hub_files["reference"], alpha=0.75, k=16, ns=(6, 10))  # fmt: skip
    res = jobs.attribute.run_attribute_bias(req)
    doc = res.to_json()
    assert set(doc["at"]) == {"6", "10"} and res.summary is doc and doc["leak"]["n_leaked"] == 0
    with pytest.raises(ParameterError):
        jobs.attribute.AttributeRequest(hub_files["queries"], hub_files["gallery"], labels, ns=(0,))


def test_job_functions_are_short():
    root = Path(__file__).resolve().parents[2] / "nnn_cli" / "jobs"
    for name in ("tune.py", "eval.py", "attribute.py", "protocol.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 40, f"{name}:{node.name}"


def test_demo_tunes_each_method_with_its_own_values_and_a_separate_bank():
    """scripts/demo.sh: every comparison method is tuned into its own params file with a gallery bank that is
    neither the test gallery nor the gallery it is tuned on, and eval reads each file (per-method values)."""
    text = (Path(__file__).resolve().parents[2] / "scripts" / "demo.sh").read_text()
    assert "--gallery-bank $D/gallery.h5" not in text and "--gallery-bank $D/tune_gallery.h5" not in text
    assert "for m in dn qbnorm is dbnorm dbnorm_dis; do" in text
    assert 'nnn tune --method $m "${HALF[@]}" --gallery-bank "$OUT/bank.h5" -o "$OUT/params_$m.json"' in text
    assert 'MP+=(--method-params "$OUT/params_$m.json")' in text and '--gallery-bank "$OUT/bank.h5" "${MP[@]}"' in text
    assert 'f"{out}/{name}.h5"' in text and '("bank", g, np.arange(half, len(truth)))' in text


def test_sketch_follows_incremental_updates(hub_files, hub_data, tmp_path):
    """--append-to keeps the reference's sketch; --update --reference-add extends it with the new queries."""
    bias = tmp_path / "b.h5"
    jobs.bias(hub_files["gallery"], reference=hub_files["reference"], output=bias, alpha=0.75, k=16)
    items = write_h5(tmp_path / "items.h5", hub_data.gallery[:5], [f"new{i}" for i in range(5)])
    appended = tmp_path / "appended.h5"
    jobs.bias(items, reference=hub_files["reference"], append_to=bias, output=appended)
    with h5py.File(appended) as f, h5py.File(bias) as g:
        np.testing.assert_array_equal(f["leak_sketch_codes"][()], g["leak_sketch_codes"][()])
    new = write_h5(tmp_path / "new.h5", hub_data.queries[:20] + np.float32(1e-5), [f"n{i}" for i in range(20)])
    jobs.bias(hub_files["gallery"], update=bias, reference_add=new)
    with h5py.File(bias) as f:
        assert f["leak_sketch_codes"].shape == (len(hub_data.reference) + 20, 64)
        assert f.attrs["leak_sketch_rows"] == len(hub_data.reference) + 20
    ev = jobs.evaluate(hub_files["queries"], hub_files["gallery"], hub_files["truth"], bias=bias)
    assert ev.document["leak"]["near_duplicates"] == 20 and ev.document["leak"]["source"] == "sketch"


def test_no_leak_sketch_records_none_and_the_same_bias(hub_files, hub_data, tmp_path):
    """--no-leak-sketch: the same bias bytes, no sketch datasets or attributes; `eval --bias` says the leaks are
    not checked; a grown file keeps its sketch, so the flag is refused there (one line, exit 2)."""
    leaky = leaked_reference(hub_data, tmp_path, ids=True)
    base = ["bias", str(hub_files["gallery"]), "-r", str(leaky), "--alpha", "0.75", "--k", "16"]
    with_sketch, without = tmp_path / "with.h5", tmp_path / "without.h5"
    assert runner.invoke(app, [*base, "-o", str(with_sketch)]).exit_code == 0
    res = runner.invoke(app, [*base, "-o", str(without), "--no-leak-sketch"])
    assert res.exit_code == 0, res.output
    with h5py.File(with_sketch) as f, h5py.File(without) as g:
        assert f["bias"][()].tobytes() == g["bias"][()].tobytes() and "topk" in g
        assert "leak_sketch_codes" not in g and "leak_sketch_id_hashes" not in g
        assert not any(key.startswith("leak_sketch") for key in g.attrs) and "leak_sketch_rows" in f.attrs
    ev = ["eval", "-Q", str(hub_files["queries"]), "-g", str(hub_files["gallery"]), "-t", str(hub_files["truth"])]
    res = runner.invoke(app, [*ev, "--bias", str(without)])
    assert res.exit_code == 0 and "records no reference sketch" in res.stderr and "--no-leak-sketch" in res.stderr
    assert "warning: 50 of 600" not in res.stderr  # not checked (the file made with the sketch would warn)
    assert "warning: 50 of 600" in runner.invoke(app, [*ev, "--bias", str(with_sketch)]).stderr
    # typed: the same through the job API
    typed = jobs.bias(hub_files["gallery"], leaky, tmp_path / "typed.h5", alpha=0.75, k=16, leak_sketch=False)
    with h5py.File(typed.output) as g:
        assert "leak_sketch_codes" not in g
    items = write_h5(tmp_path / "items.h5", hub_data.gallery[:5])
    res = runner.invoke(
        app, ["bias", str(items), "-r", str(leaky), "--append-to", str(with_sketch), "--no-leak-sketch"]
    )
    assert res.exit_code == 2 and "--no-leak-sketch applies to a new bias file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_queries_and_reference_fraction_through_the_pipeline(hub_files, hub_data, tmp_path):
    """--queries and --reference-fraction on a blocked run (a run folder through the scheduler seam, the path
    --engine ray takes): the same share, biases and leak report as a bias file; --strict leaves nothing."""
    from nnn_cli.data.biasfile import read_bias
    from nnn_cli.data.sinks import read_run_bias

    leaky = leaked_reference(hub_data, tmp_path)
    opts = dict(
        reference=leaky, alpha=0.75, k=16, queries=hub_files["queries"], reference_fraction=0.5, reference_seed=3
    )
    run = jobs.bias(hub_files["gallery"], output=tmp_path / "run", **opts)
    whole = jobs.bias(hub_files["gallery"], output=tmp_path / "b.h5", **opts)
    n_used = len(reference_subsample(len(hub_data.reference) + 50, 0.5, 3))
    assert run.n_reference == whole.n_reference == n_used and "plan" in run.details
    leak = run.to_json()["leak"]
    assert leak == whole.to_json()["leak"] and 0 < leak["near_duplicates"] < 50
    np.testing.assert_allclose(read_run_bias(tmp_path / "run").bias, read_bias(tmp_path / "b.h5").bias, atol=1e-6)
    with pytest.raises(ParameterError, match="also appear in the reference"):
        jobs.bias(hub_files["gallery"], output=tmp_path / "run2", strict=True, **opts)
    assert not (tmp_path / "run2").exists()


def test_queries_on_append_and_update_and_the_share_refused(hub_files, hub_data, tmp_path):
    """--queries on --append-to (against the file's reference) and on --update (against the new queries and
    the sketch of the file's reference); --reference-fraction on either is refused with one line."""
    leaky = leaked_reference(hub_data, tmp_path)
    bias = tmp_path / "b.h5"
    jobs.bias(hub_files["gallery"], reference=leaky, output=bias, alpha=0.75, k=16)
    items = write_h5(tmp_path / "items.h5", hub_data.gallery[:5], [f"new{i}" for i in range(5)])
    appended = jobs.bias(items, reference=leaky, append_to=bias, output=tmp_path / "a.h5", queries=hub_files["queries"])
    assert appended.to_json()["leak"]["near_duplicates"] == 50
    new = write_h5(tmp_path / "new.h5", hub_data.queries[50:70] + np.float32(1e-5), [f"n{i}" for i in range(20)])
    updated = jobs.bias(hub_files["gallery"], update=bias, reference_add=new, queries=hub_files["queries"]).to_json()
    assert updated["leak"]["near_duplicates"] == 20 and updated["leak"]["rows"][0] == 50
    assert updated["leak_stored_reference"]["near_duplicates"] == 50
    assert updated["leak_stored_reference"]["source"] == "sketch"
    with pytest.raises(ParameterError, match="keep the reference the file was made with"):
        jobs.bias(items, reference=leaky, append_to=bias, output=tmp_path / "c.h5", reference_fraction=0.5)
