"""One pipeline, sources and sinks (issue 18), on the local scheduler (threads) and a real S3 API server (moto on
127.0.0.1): run folders as trustworthy as bias files, URLs that stay URLs, bounded I/O, typed job API.

The same pipeline on Ray tasks is tested in tests/ray/test_ray_engine.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli import app
from nnn_cli.core.nnn import compute_bias
from nnn_cli.core.topk import topk_scores
from nnn_cli.data.inputs import open_embeddings
from nnn_cli.data.manifest import read_manifest, read_manifest_bias
from nnn_cli.errors import InputError, MismatchError, ParameterError

ALPHA, K, D = 0.75, 8, 24
ROOT = Path(__file__).resolve().parents[2]
PLAN = ["--block-rows", "1024", "--partition-rows", "8192"]


@pytest.fixture
def emb(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {
        "g": rng.standard_normal((2600, D)).astype(np.float32),
        "r": rng.standard_normal((9000, D)).astype(np.float32),
        "q": rng.standard_normal((300, D)).astype(np.float32),
        "g2": rng.standard_normal((700, D)).astype(np.float32),
        "r2": rng.standard_normal((1500, D)).astype(np.float32),
    }
    for name, arr in arrays.items():
        np.save(tmp_path / f"{name}.npy", arr)
    return tmp_path, arrays


def cli(*args, code=0):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def one_line_error(res) -> str:
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def normed(arr):
    """Rows L2-normalised exactly as the readers do (the oracle's inputs, bit for bit)."""
    from nnn_cli.data.sources import EmbeddingSource

    src = EmbeddingSource(Path("mem"), None, "mem", arr.shape, arr.dtype, "oracle", _array=arr)
    return src.read("cosine")


def bias_args(p, out, *extra):
    return ["bias", p / "g.npy", "-r", p / "r.npy", "-a", ALPHA, "-k", K, "-o", out, *extra]


# ---------------------------------------------------------------------------
# One pipeline: a run folder on local threads equals the in-memory engine byte for byte
# ---------------------------------------------------------------------------
def test_run_folder_on_local_threads_equals_bias_file(emb):
    p, _ = emb
    cli(*bias_args(p, p / "b.h5"))
    res = cli(*bias_args(p, p / "run", *PLAN, "--json"))
    doc = json.loads(res.stdout)
    assert doc["engine"] == "local" and doc["blocks_computed"] == 3 and isinstance(doc["seconds"], float)
    with h5py.File(p / "b.h5") as f:
        want, want_topk = f["bias"][()], f["topk"][()]
    got = read_manifest_bias(p / "run", with_topk=True)
    assert np.array_equal(got.bias, want) and np.array_equal(got.attrs["topk"], want_topk)
    m = read_manifest(p / "run")
    rec = m["blocks_done"]["1"]
    assert rec["rows"] == [1024, 2048] and set(rec["checksums"]) == {"bias", "topk"} and rec["inputs"]["gallery"]
    assert len(m["inputs"]["reference"]["parts"][0]["fingerprints"]) == 2  # one per 8192-row partition
    # a blocked run can write a bias file too (same bytes)
    cli(*bias_args(p, p / "b2.h5", *PLAN))
    with h5py.File(p / "b2.h5") as f:
        assert np.array_equal(f["bias"][()], want) and f.attrs["gallery_fingerprint"]


def test_index_runs_plan_blocks_on_their_index_grid(emb):
    """IVF blocks lie on list-major's row grid (LIST_ROW_BLOCK: a block's GEMMs are a local run's), HNSW
    blocks on QUERY_TILE (searched row by row): the plan takes the chosen index's kind."""
    from nnn_cli.core.topk import QUERY_TILE
    from nnn_cli.scale.index.listscan import LIST_ROW_BLOCK
    from nnn_cli.scale.pipeline import index_plan

    assert index_plan(2600, 9000, QUERY_TILE, "hnsw").blocks == [(0, 1024), (1024, 2048), (2048, 2600)]
    assert index_plan(2600, 9000, None, "ivf").blocks == [(0, 2600)]
    with pytest.raises(ParameterError, match=str(LIST_ROW_BLOCK)):
        index_plan(2600, 9000, QUERY_TILE, "ivf")
    p, _ = emb
    res = cli(*bias_args(p, p / "hnsw", "--index", "hnsw", "--block-rows", QUERY_TILE, "--json"))
    assert json.loads(res.stdout)["blocks_computed"] == 3
    assert read_manifest(p / "hnsw")["blocks_done"]["1"]["rows"] == [1024, 2048]
    bad = cli(*bias_args(p, p / "ivf", "--index", "ivf", "--nlist", 16, "--block-rows", QUERY_TILE), code=2)
    assert str(LIST_ROW_BLOCK) in one_line_error(bad) and not (p / "ivf").exists()


# ---------------------------------------------------------------------------
# Repeats, stale runs
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["run", "b.h5"])
def test_repeated_append_and_update_refused(emb, target):
    p, a = emb
    cli(*bias_args(p, p / target, *(PLAN if target == "run" else [])))
    cli("bias", p / "g2.npy", "-r", p / "r.npy", "--append-to", p / target)
    bad = cli("bias", p / "g2.npy", "-r", p / "r.npy", "--append-to", p / target, code=2)
    assert "already part of" in one_line_error(bad)
    both = p / "both.npy"
    np.save(both, np.vstack([a["g"], a["g2"]]))
    cli("bias", both, "--update", p / target, "--reference-add", p / "r2.npy")
    bad = cli("bias", both, "--update", p / target, "--reference-add", p / "r2.npy", code=2)
    assert "already part of" in one_line_error(bad)
    if target == "run":
        got = read_manifest_bias(p / "run").bias
        g, r = normed(np.vstack([a["g"], a["g2"]])), normed(np.vstack([a["r"], a["r2"]]))
        np.testing.assert_allclose(got, compute_bias(g, r, ALPHA, K), rtol=0, atol=2e-6)
        assert len(got) == 3300  # counted once, not 3300 + 700


def test_stale_run_folder_refused_like_a_stale_bias_file(emb):
    p, a = emb
    cli(*bias_args(p, p / "run", *PLAN))
    other = a["g"].copy()
    other[1500] += 1.0  # same size, one middle row changed: another gallery
    np.save(p / "other.npy", other)
    for bias in ("run",):
        bad = cli("search", p / "q.npy", "-g", p / "other.npy", "-b", p / bias, "-o", p / "res.h5", code=2)
        line = one_line_error(bad)
        assert "rows 1024..2047" in line and "--force" in line and not (p / "res.h5").exists()
    cli("search", p / "q.npy", "-g", p / "other.npy", "-b", p / "run", "-o", p / "res.h5", "--force")
    cli("search", p / "q.npy", "-g", p / "g.npy", "-b", p / "run", "-o", p / "ok.h5")
    np.save(p / "truth.npy", np.arange(300) % 2600)
    ev = ["eval", "--queries", p / "q.npy", "--truth", p / "truth.npy", "--bias", p / "run"]
    bad = cli(*ev, "--gallery", p / "other.npy", code=2)
    assert "rows 1024..2047" in one_line_error(bad)
    cli(*ev, "--gallery", p / "g.npy")


# ---------------------------------------------------------------------------
# Verified reads and resume
# ---------------------------------------------------------------------------
def _damage(run: Path, how: str) -> str:
    m = json.loads((run / "manifest.json").read_text())
    rel = m["blocks_done"]["1"]["file"]
    path = run / rel
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif how == "nan":
        arr = np.load(path)
        arr[3] = np.nan
        np.save(path, arr)
    elif how == "edited":
        arr = np.load(path)
        arr[3] += 0.5
        np.save(path, arr)
    elif how == "missing":
        path.unlink()
    elif how == "escaping":
        (run.parent / "outside.npy").write_bytes(path.read_bytes())
        m["blocks_done"]["1"]["file"] = m["blocks_done"]["1"]["files"]["bias"] = "../outside.npy"
        (run / "manifest.json").write_text(json.dumps(m))
        return "outside"
    return rel


@pytest.mark.parametrize("how", ["truncated", "nan", "edited", "missing", "escaping"])
def test_damaged_blocks_refused_naming_the_file(emb, how):
    p, _ = emb
    cli(*bias_args(p, p / "run", *PLAN))
    name = _damage(p / "run", how)
    bad = cli("search", p / "q.npy", "-g", p / "g.npy", "-b", p / "run", "-o", p / "res.h5", code=2)
    line = one_line_error(bad)
    assert name in line and not (p / "res.h5").exists()
    with pytest.raises(InputError):
        read_manifest_bias(p / "run")


def test_damaged_manifest_exit_2_naming_it(emb):
    p, _ = emb
    cli(*bias_args(p, p / "run", *PLAN))
    (p / "run" / "manifest.json").write_text("{not json")
    bad = cli("search", p / "q.npy", "-g", p / "g.npy", "-b", p / "run", "-o", p / "res.h5", code=2)
    assert "manifest.json" in one_line_error(bad)
    (p / "run" / "manifest.json").write_text(json.dumps({"format": "nnn-bias-run/2"}))
    bad = cli("info", p / "run", code=2)
    assert "manifest" in one_line_error(bad)


def _interrupt(run: Path, keep: int) -> None:
    """What a killed run leaves: its manifest with the first ``keep`` blocks done, not complete."""
    m = json.loads((run / "manifest.json").read_text())
    m["blocks_done"] = {b: v for b, v in m["blocks_done"].items() if int(b) < keep}
    m["complete"] = False
    (run / "manifest.json").write_text(json.dumps(m))


def test_resume_recomputes_changed_middle_rows_and_damaged_blocks(emb):
    p, a = emb
    cli(*bias_args(p, p / "run", *PLAN))
    _interrupt(p / "run", keep=2)
    bad = cli("search", p / "q.npy", "-g", p / "g.npy", "-b", p / "run", "-o", p / "res.h5", code=2)
    assert "unfinished" in one_line_error(bad) and "--resume" in bad.output
    changed = a["g"].copy()
    changed[1500] *= -1  # a middle row of kept block 1 (rows 1024..2047), not its first or last 64 KiB
    np.save(p / "g.npy", changed)
    block0 = read_manifest(p / "run")["blocks_done"]["0"]["finished"]
    res = cli(*bias_args(p, p / "run", *PLAN, "--resume", "--json"))
    doc = json.loads(res.stdout)
    assert doc["blocks_skipped"] == 1 and doc["blocks_computed"] == 2  # block 1 recomputed, block 0 kept
    assert read_manifest(p / "run")["blocks_done"]["0"]["finished"] == block0
    want = compute_bias(normed(changed), normed(a["r"]), ALPHA, K)
    assert np.array_equal(read_manifest_bias(p / "run").bias, want)
    # a damaged kept block is recomputed too
    _interrupt(p / "run", keep=3)
    _damage(p / "run", "edited")
    doc = json.loads(cli(*bias_args(p, p / "run", *PLAN, "--resume", "--json")).stdout)
    assert doc["blocks_skipped"] == 2 and doc["blocks_computed"] == 1
    assert np.array_equal(read_manifest_bias(p / "run").bias, want)
    # a changed reference cannot be resumed: every block depends on it
    _interrupt(p / "run", keep=1)
    r = a["r"].copy()
    r[4000] *= -1
    np.save(p / "r.npy", r)
    bad = cli(*bias_args(p, p / "run", *PLAN, "--resume"), code=2)
    assert "reference rows 0..8191" in one_line_error(bad)


# ---------------------------------------------------------------------------
# Nothing written before validation; a failed run leaves nothing that blocks the next
# ---------------------------------------------------------------------------
def test_failed_run_leaves_nothing_that_blocks_the_next(emb):
    p, a = emb
    bad = cli("bias", p / "g.npy", "-r", p / "r.npy", "-a", "nan", "-k", K, "-o", p / "run", code=2)
    assert not (p / "run").exists()
    bad = cli("bias", p / "g.npy", "-r", p / "r.npy", "-a", ALPHA, "-k", 100000, "-o", p / "run", code=2)
    assert not (p / "run").exists()
    g = a["g"].copy()
    g[2100, 3] = np.nan  # found by the task reading block 2, after blocks were written
    np.save(p / "g.npy", g)
    bad = cli(*bias_args(p, p / "run", *PLAN), code=2)
    assert "row 2100" in one_line_error(bad)
    assert not (p / "run" / "manifest.json").exists() and not list((p / "run").rglob("*.npy"))
    np.save(p / "g.npy", a["g"])
    cli(*bias_args(p, p / "run", *PLAN))  # no --resume needed: the failed run left nothing
    assert read_manifest(p / "run")["complete"] is True


# ---------------------------------------------------------------------------
# URLs: unknown schemes, memory://, silent endpoints, S3 (moto)
# ---------------------------------------------------------------------------
def test_memory_and_unknown_schemes_refused_in_one_line(emb):
    p, _ = emb
    bad = cli(*bias_args(p, "memory://run"), code=2)
    line = one_line_error(bad)
    assert "memory://run" in line and "vanish" in line
    bad = cli(*bias_args(p, "foo://bucket/run"), code=2)
    assert "foo://bucket/run" in one_line_error(bad) and "unknown URL scheme" in bad.output
    bad = cli("bias", "foo://bucket/g.npy", "-r", p / "r.npy", "-a", ALPHA, "-k", K, "-o", p / "b.h5", code=2)
    assert "foo://bucket/g.npy" in one_line_error(bad)
    assert not (p / "b.h5").exists() and not Path("memory:").exists() and not Path("foo:").exists()


@pytest.fixture
def silent_endpoint():
    """A TCP server on 127.0.0.1 that accepts connections and never answers (owned and closed by the test)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        t.join()
        for conn in held:
            conn.close()
        server.close()


def _nnn(*args, env=None, timeout=120):
    full = {**os.environ, "PYTHONPATH": str(ROOT), "AWS_DEFAULT_REGION": "us-east-1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "nnn_cli", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
    )


def test_silent_endpoint_times_out_with_one_line(emb, silent_endpoint):
    pytest.importorskip("s3fs")
    p, _ = emb
    so = [
        "--storage-option",
        f"endpoint_url={silent_endpoint}",
        "--storage-option",
        "key=x",
        "--storage-option",
        "secret=y",
    ]
    res = _nnn(*bias_args(p, "s3://bucket/run", *so, "--io-timeout", "2"))
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "s3://bucket/run" in line and "no answer within 2 s" in line
    # an input behind it, with the timeout from the environment
    res = _nnn("bias", "s3://bucket/g.npy", "-r", p / "r.npy", "-a", ALPHA, "-k", K, "-o", p / "b.h5", *so,
               env={"NNN_IO_TIMEOUT": "2"})  # fmt: skip
    assert res.returncode == 2 and "s3://bucket/g.npy" in res.stderr and "within 2 s" in res.stderr
    assert not (p / "b.h5").exists()
    bad = cli(*bias_args(p, p / "b.h5", "--io-timeout", "-1"), code=2)
    assert "--io-timeout" in one_line_error(bad)


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
        ).create_bucket(Bucket="nnn")
        yield {"endpoint_url": endpoint, "key": "t", "secret": "t", "client_kwargs": {"region_name": "us-east-1"}}
    finally:
        server.stop()


def test_output_url_reaches_the_bucket_and_inputs_by_url(emb, s3, monkeypatch):
    import fsspec

    p, a = emb
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fs = fsspec.filesystem("s3", **s3)
    with h5py.File(p / "g.h5", "w") as f:  # nnn embed's layout: embeddings + ids
        f["embeddings"] = a["g"]
        f.create_dataset("ids", data=np.array([f"i{i}" for i in range(len(a["g"]))], dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip
    fs.put(str(p / "g.h5"), "nnn/in/g.h5")
    fs.put(str(p / "r.npy"), "nnn/in/r.npy")
    so = []
    for key in ("endpoint_url", "key", "secret"):
        so += ["--storage-option", f"{key}={s3[key]}"]
    cli(*bias_args(p, p / "b.h5"))
    res = cli("bias", "s3://nnn/in/g.h5", "-r", "s3://nnn/in/r.npy", "-a", ALPHA, "-k", K, "-o", "s3://nnn/run",
              *PLAN, *so, "--json")  # fmt: skip
    assert json.loads(res.stdout)["output"] == "s3://nnn/run"
    assert fs.exists("nnn/run/manifest.json") and fs.exists("nnn/run/blocks/bias_000002.npy")
    assert not Path("s3:").exists()  # not a local folder ./s3:/nnn/run
    with h5py.File(p / "b.h5") as f:
        want = f["bias"][()]
    assert np.array_equal(read_manifest_bias("s3://nnn/run", s3).bias, want)
    m = read_manifest("s3://nnn/run", s3)
    assert m["inputs"]["gallery"]["parts"][0]["path"] == "s3://nnn/in/g.h5:embeddings"
    res = cli("search", p / "q.npy", "-g", "s3://nnn/in/g.h5", "-b", "s3://nnn/run", "-o", p / "res.jsonl", *so)
    first = json.loads((p / "res.jsonl").read_text().splitlines()[0])
    assert first["results"][0]["id"].startswith("i")  # ids of an HDF5 input behind a URL
    bad = cli("bias", "s3://nnn/in/missing.npy", "-r", p / "r.npy", "-a", ALPHA, "-k", K, "-o", p / "x.h5", *so,
              code=2)  # fmt: skip
    assert "s3://nnn/in/missing.npy" in one_line_error(bad)  # printed as given, not s3:/nnn/...


# ---------------------------------------------------------------------------
# The typed Python API, one test per job
# ---------------------------------------------------------------------------
def test_bias_job_typed_request_and_result(emb):
    from nnn_cli import jobs
    from nnn_cli.jobs import BiasRequest, BiasResult, EngineOptions

    p, a = emb
    req = BiasRequest.build(p / "g.npy", p / "r.npy", p / "run", alpha=ALPHA, k=K,
                            engine=EngineOptions(block_rows=1024, partition_rows=8192))  # fmt: skip
    assert req.output == str(p / "run") and req.alpha == ALPHA and req.operation == "create"
    result = jobs.run_bias(req)
    assert isinstance(result, BiasResult) and result.output == p / "run"
    doc = result.to_json()
    assert doc["output"] == str(p / "run") and isinstance(doc["seconds"], float) and doc["blocks"] == 3
    assert json.dumps(doc)  # JSON-ready: no live objects
    want = compute_bias(normed(a["g"]), normed(a["r"]), ALPHA, K)
    assert np.array_equal(read_manifest_bias(p / "run").bias, want)
    assert result.summary["message"].startswith("wrote")
    with pytest.raises(ParameterError, match="alpha"):
        BiasRequest.build(p / "g.npy", p / "r.npy", p / "x.h5", alpha=float("inf"), k=K)
    with pytest.raises(ParameterError, match="metric"):
        BiasRequest.build(p / "g.npy", p / "r.npy", p / "x.h5", alpha=ALPHA, k=K, metric="l2")
    # the README's call, as written
    b = jobs.bias(str(p / "g.npy"), reference=str(p / "r.npy"), output=str(p / "b.h5"), alpha=ALPHA, k=K)
    assert b.output == p / "b.h5" and abs(b.summary["bias_mean"] - float(want.mean())) < 1e-6


def test_search_job_typed_request_and_result(emb):
    from nnn_cli import jobs
    from nnn_cli.core.search import search as array_search
    from nnn_cli.jobs import EngineOptions, SearchRequest, SearchResult

    p, a = emb
    jobs.bias(p / "g.npy", reference=p / "r.npy", output=p / "run", alpha=ALPHA, k=K)
    bias = read_manifest_bias(p / "run").bias
    want = array_search(normed(a["q"]), normed(a["g"]), bias, 5)
    for engine in (EngineOptions(), EngineOptions(partition_rows=8192)):  # in memory; blocked on local threads
        req = SearchRequest.build(p / "q.npy", p / "g.npy", p / "res.h5", bias=p / "run", top_k=5, engine=engine)
        result = jobs.run_search(req)
        assert isinstance(result, SearchResult) and result.to_json()["debiased"] and result.engine == "local"
        with h5py.File(p / "res.h5") as f:
            assert np.array_equal(f["scores"][()], want[0]) and np.array_equal(f["indices"][()], want[1])
    with pytest.raises(ParameterError, match="top-k"):
        SearchRequest.build(p / "q.npy", p / "g.npy", p / "res.h5", top_k=0)
    with pytest.raises(MismatchError):
        jobs.search(p / "q.npy", p / "g2.npy", p / "res2.h5", bias=p / "run")
    assert not (p / "res2.h5").exists()


def test_topk_of_a_run_equals_exact(emb):
    """The stored top-k of a blocked run on local threads: exact, descending, float32."""
    p, a = emb
    cli(*bias_args(p, p / "run", *PLAN))
    got = read_manifest_bias(p / "run", with_topk=True).attrs["topk"]
    assert got.dtype == np.float32 and np.array_equal(got, topk_scores(normed(a["g"]), normed(a["r"]), K))
    assert open_embeddings(p / "g.npy").fingerprint_rows(0, 2600) == open_embeddings(p / "g.npy").fingerprint()


def test_missing_credentials_and_unreachable_endpoint_one_line(emb, s3):
    pytest.importorskip("s3fs")
    p, _ = emb
    no_creds = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(p / "none"),
        "AWS_CONFIG_FILE": str(p / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env = {k: v for k, v in no_creds.items() if v}
    full = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    res = subprocess.run(
        [sys.executable, "-m", "nnn_cli", *map(str, bias_args(p, "s3://nnn/creds", "--storage-option",
         f"endpoint_url={s3['endpoint_url']}", "--io-timeout", "10"))],
        capture_output=True, text=True, timeout=120,
        env={**full, **env, "PYTHONPATH": str(ROOT), "AWS_DEFAULT_REGION": "us-east-1"},
    )  # fmt: skip
    assert res.returncode == 2 and "s3://nnn/creds" in res.stderr and "credentials" in res.stderr.lower(), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    res = _nnn(*bias_args(p, "s3://nnn/run2", "--storage-option", f"endpoint_url=http://127.0.0.1:{closed}",
               "--storage-option", "key=x", "--storage-option", "secret=y", "--io-timeout", "10"))  # fmt: skip
    assert res.returncode == 2 and "s3://nnn/run2" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_jobs_name_no_engine_and_stay_short():
    """Every job hands the engine to scale/ (one factory) and keeps every function to 40 lines."""
    import ast

    paths = sorted((ROOT / "nnn_cli" / "jobs").glob("*.py"))
    assert {"bias.py", "search.py", "common.py", "stores.py", "export.py", "eval.py", "embed.py"} <= {
        p.name for p in paths
    }
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 40, f"{path.name}:{node.name}"
            if isinstance(node, ast.Constant) and node.value in ("ray", "local"):
                raise AssertionError(f"{path.name}:{node.lineno} names an engine")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnn_cli.scale.ray"):
                raise AssertionError(f"{path.name} imports {node.module}")


def test_sources_sinks_and_schedulers_meet_their_protocols(emb):
    """What a store developer implements: the protocols the pipeline relies on (runtime-checkable)."""
    from nnn_cli.data.contracts import Sink, Source
    from nnn_cli.data.sinks import BiasFileSink, RunFolderSink
    from nnn_cli.scale.engines import make_scheduler
    from nnn_cli.scale.scheduler import Scheduler

    p, _ = emb
    assert isinstance(open_embeddings(p / "g.npy"), Source)
    assert isinstance(RunFolderSink(str(p / "run")), Sink) and isinstance(BiasFileSink(str(p / "b.h5")), Sink)
    assert isinstance(make_scheduler("local"), Scheduler)
    with pytest.raises(ParameterError, match="unknown --engine"):
        make_scheduler("spark")
