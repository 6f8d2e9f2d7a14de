"""`--engine ray` on a real local Ray cluster and a real S3 API server, both on 127.0.0.1 only.

One cluster (2 CPUs, 2 logical GPUs) serves the whole module; it is started by tests/ray/ray_cluster.py
as a holder process in its own session and stopped by PID (never `ray stop`).  Token authentication
uses a token file private to the module (RAY_AUTH_TOKEN_PATH), so nothing in ~/.ray is touched.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# Ray reads these at import time.  Without the first, a driver rewrites 127.0.0.1 to the host's interface
# address; the others give the module's cluster a token of its own (~/.ray is not touched).
_AUTH_DIR = tempfile.mkdtemp(prefix="nnn-ray-auth-")
with open(os.path.join(_AUTH_DIR, "token"), "w") as _fh:
    _fh.write(secrets.token_hex(32))  # the format of Ray's generate_new_authentication_token
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN_PATH": os.path.join(_AUTH_DIR, "token"),
    "RAY_USAGE_STATS_ENABLED": "0",
}
os.environ.update(RAY_ENV)
try:
    ray = pytest.importorskip("ray")
    pytest.importorskip("fsspec")
    psutil = pytest.importorskip("psutil")
except BaseException:  # skipped: leave no token behind
    shutil.rmtree(_AUTH_DIR, ignore_errors=True)
    raise

sys.path.insert(0, str(Path(__file__).parent))
from ray_cluster import LOOPBACK_ENV, LocalRayCluster, listening_sockets  # noqa: E402

from nnn_cli.core.nnn import compute_bias  # noqa: E402
from nnn_cli.core.search import search  # noqa: E402
from nnn_cli.core.topk import topk_scores  # noqa: E402
from nnn_cli.data.inputs import open_embeddings  # noqa: E402
from nnn_cli.errors import InputError, MismatchError, ParameterError  # noqa: E402
from nnn_cli.scale.ray import (
    ray_add_reference,
    ray_append,
    ray_bias,
    ray_search,
    read_manifest,
    read_manifest_bias,
)

ALPHA, K, D = 0.75, 16, 48
N_GALLERY, N_REFERENCE, N_QUERIES = 5000, 20000, 2500
PLAN = {"block_rows": 2048, "partition_rows": 8192}  # 3 gallery blocks x 3 reference partitions
INIT = {"_node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def cluster():
    c = LocalRayCluster(num_cpus=2, num_gpus=2, env={**LOOPBACK_ENV, **RAY_ENV}).start()
    try:
        ray.init(address=c.address, configure_logging=False, log_to_driver=False, **INIT)
        yield c
    finally:
        ray.shutdown()
        c.stop()
        shutil.rmtree(_AUTH_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(13)
    hubs = rng.standard_normal((8, D)).astype(np.float32)
    g = rng.standard_normal((N_GALLERY, D)).astype(np.float32)
    g[rng.integers(0, N_GALLERY, 400)] += 2 * hubs[rng.integers(0, 8, 400)]
    r = rng.standard_normal((N_REFERENCE, D)).astype(np.float32)
    q = rng.standard_normal((N_QUERIES, D)).astype(np.float32)
    for name, arr, shard in (("gallery", g, 1700), ("reference", r, 7000)):
        (root / name).mkdir()
        for i, s in enumerate(range(0, len(arr), shard)):
            np.save(root / name / f"{i}.npy", arr[s : s + shard])
    np.save(root / "queries.npy", q)
    G = open_embeddings(root / "gallery").read("cosine")
    R = open_embeddings(root / "reference").read("cosine")
    Q = open_embeddings(root / "queries.npy").read("cosine")
    return {"root": root, "G": G, "R": R, "Q": Q, "bias": compute_bias(G, R, ALPHA, K), "topk": topk_scores(G, R, K)}


def assert_same_to_rounding(got, want):
    """Incremental runs (append, reference-add) against a fresh run: new rows and new reference queries sit
    at other positions inside the GEMM tiles than in the fresh run, and some OpenBLAS kernels (Haswell)
    round a dot product differently by position, so equality holds to float32 rounding, and bit for bit
    on kernels that do not (SkylakeX, Sandybridge here), as for local --append-to/--update."""
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def _check_output(out, data, **kw):
    bf = read_manifest_bias(out, with_topk=True, **kw)
    assert bf.bias.dtype == np.float32
    assert np.array_equal(bf.bias, data["bias"])
    assert np.array_equal(bf.attrs["topk"], data["topk"])


def test_bias_byte_identical_to_local(cluster, data, tmp_path):
    root = data["root"]
    s = ray_bias(root / "gallery", f"file://{root}/reference", ALPHA, K, "cosine", str(tmp_path / "out"), **PLAN)
    assert s["plan"]["tasks"] == 9 and s["blocks_computed"] == 3 and s["tasks_run"] == 9
    _check_output(str(tmp_path / "out"), data)
    m = read_manifest(str(tmp_path / "out"))
    assert sorted(m["blocks_done"]) == ["0", "1", "2"] and m["params"]["k"] == K
    _check_ranged_reads(s)


def _check_ranged_reads(summary):
    """Each task fetched exactly the bytes of its gallery block and its reference partition."""
    plan = summary["plan"]
    blocks = [(s, min(plan["n_rows"], s + plan["block_rows"])) for s in range(0, plan["n_rows"], plan["block_rows"])]
    parts = [
        (s, min(plan["n_stream"], s + plan["partition_rows"]))
        for s in range(0, plan["n_stream"], plan["partition_rows"])
    ]
    want = sorted(((g1 - g0) + (r1 - r0)) * D * 4 for g0, g1 in blocks for r0, r1 in parts)
    assert sorted(summary["task_bytes_read"]) == want


def test_search_byte_identical_to_local(cluster, data, tmp_path):
    root = data["root"]
    rng = np.random.default_rng(1)
    b = (0.3 * rng.random(N_REFERENCE)).astype(np.float32)
    # gallery = the 20k-row folder: 3 gallery partitions of 8192 rows; queries in 1 block
    for bias in (b, None):
        want = search(data["Q"], data["R"], bias, 10)
        got = ray_search(root / "queries.npy", root / "reference", bias, 10, partition_rows=8192)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    out = tmp_path / "out"
    ray_bias(root / "gallery", root / "reference", ALPHA, K, "cosine", str(out), **PLAN)
    want = search(data["Q"], data["G"], data["bias"], 7)
    got = ray_search(root / "queries.npy", root / "gallery", str(out), 7)  # a manifest folder as the bias
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_worker_killed_mid_job_is_retried(cluster, data, tmp_path):
    root = data["root"]
    killed = []

    def killer():
        deadline = time.time() + 30
        while time.time() < deadline and not killed:
            for p in cluster.descendants():
                try:
                    if p.name().startswith("ray::partial_topk") or "ray::partial_topk" in " ".join(p.cmdline()):
                        p.send_signal(signal.SIGKILL)
                        killed.append(p.pid)
                        break
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    s = ray_bias(
        root / "gallery",
        root / "reference",
        ALPHA,
        K,
        "cosine",
        str(tmp_path / "out"),
        max_retries=3,
        _task_delay=0.5,
        **PLAN,
    )
    t.join()
    assert killed, "no running task process was found to kill"
    assert killed[0] not in {w[0] for w in s["task_windows"]}  # the killed attempt did not report back
    assert s["tasks_run"] == 9
    _check_output(str(tmp_path / "out"), data)


DRIVER = textwrap.dedent("""
    import sys
    from nnn_cli.scale.ray import ray_bias
    ray_bias(sys.argv[1], sys.argv[2], {alpha}, {k}, "cosine", sys.argv[3], address=sys.argv[4],
             init_kwargs={{"_node_ip_address": "127.0.0.1"}}, block_rows=1024, partition_rows=8192,
             max_blocks_in_flight=1, _task_delay=0.4)
""")


def test_driver_killed_then_resume(cluster, data, tmp_path):
    root, out = data["root"], tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(alpha=ALPHA, k=K))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root / "gallery"), str(root / "reference"), str(out), cluster.address],
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        done = {}
        while time.time() < deadline and proc.poll() is None:
            if (out / "manifest.json").exists():
                done = json.loads((out / "manifest.json").read_text())["blocks_done"]
                if len(done) >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)  # the driver, by PID
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    m = json.loads((out / "manifest.json").read_text())
    finished = sorted(m["blocks_done"], key=int)
    assert 2 <= len(finished) < 5
    with pytest.raises(InputError, match="unfinished"):
        read_manifest_bias(str(out))
    mtimes = {b: os.stat(out / m["blocks_done"][b]["file"]).st_mtime_ns for b in finished}
    with pytest.raises(ParameterError, match="resume"):
        ray_bias(
            root / "gallery", root / "reference", ALPHA, K, "cosine", str(out), block_rows=1024, partition_rows=8192
        )
    with pytest.raises(MismatchError, match="params"):
        ray_bias(
            root / "gallery",
            root / "reference",
            0.5,
            K,
            "cosine",
            str(out),
            resume=True,
            block_rows=1024,
            partition_rows=8192,
        )
    s = ray_bias(
        root / "gallery",
        root / "reference",
        ALPHA,
        K,
        "cosine",
        str(out),
        resume=True,
        block_rows=1024,
        partition_rows=8192,
    )
    assert s["blocks_skipped"] == len(finished) and s["blocks_computed"] == 5 - len(finished)
    assert {b: os.stat(out / m["blocks_done"][b]["file"]).st_mtime_ns for b in finished} == mtimes
    m2 = read_manifest(str(out))
    assert all(m2["blocks_done"][b]["finished"] == m["blocks_done"][b]["finished"] for b in finished)
    _check_output(str(out), data)


@pytest.fixture(scope="module")
def s3(cluster):
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }
    try:
        yield opts, port
    finally:
        server.stop()


def test_inputs_and_outputs_on_s3(cluster, data, s3):
    import fsspec

    opts, port = s3
    boto3 = pytest.importorskip("boto3")
    boto3.client(
        "s3",
        endpoint_url=opts["endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="nnn-test")
    fs = fsspec.filesystem("s3", **opts)
    root = data["root"]
    fs.put(str(root / "gallery"), "nnn-test/emb/gallery", recursive=True)
    fs.put(str(root / "reference"), "nnn-test/emb/reference", recursive=True)
    fs.put(str(root / "queries.npy"), "nnn-test/emb/queries.npy")
    s = ray_bias(
        "s3://nnn-test/emb/gallery",
        "s3://nnn-test/emb/reference",
        ALPHA,
        K,
        "cosine",
        "s3://nnn-test/out",
        storage_options=opts,
        **PLAN,
    )
    assert s["blocks_computed"] == 3
    assert fs.exists("nnn-test/out/manifest.json") and fs.exists("nnn-test/out/blocks/bias_000002.npy")
    _check_output("s3://nnn-test/out", data, storage_options=opts)
    _check_ranged_reads(s)
    want = search(data["Q"], data["G"], data["bias"], 5)
    got = ray_search(
        "s3://nnn-test/emb/queries.npy", "s3://nnn-test/emb/gallery", "s3://nnn-test/out", 5, storage_options=opts
    )
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # incremental on the object store (no lock there): append the queries as new items, then add them as
    # reference queries; a repeated append (a cron job re-run) is refused: it would count those rows twice
    s = ray_append(
        "s3://nnn-test/emb/queries.npy", "s3://nnn-test/emb/reference", "s3://nnn-test/out", storage_options=opts
    )
    assert s["blocks_added"] == 2
    with pytest.raises(ParameterError, match="already part of"):
        ray_append(
            "s3://nnn-test/emb/queries.npy", "s3://nnn-test/emb/reference", "s3://nnn-test/out", storage_options=opts
        )
    s = ray_add_reference(
        "s3://nnn-test/emb/gallery", "s3://nnn-test/emb/queries.npy", "s3://nnn-test/out", storage_options=opts
    )
    assert s["blocks_rewritten"] == 5 and not fs.exists("nnn-test/out/blocks/bias_000000.npy")
    got = read_manifest_bias("s3://nnn-test/out", opts, with_topk=True)
    both_g, both_r = np.vstack([data["G"], data["Q"]]), np.vstack([data["R"], data["Q"]])
    assert_same_to_rounding(got.bias, compute_bias(both_g, both_r, ALPHA, K))
    assert_same_to_rounding(got.attrs["topk"], topk_scores(both_g, both_r, K))
    # the S3 server listens on loopback only
    mine = [ip for pid, ip, p in listening_sockets({os.getpid()}) if p == port]
    assert mine == ["127.0.0.1"]


def test_logical_gpus_one_per_task(cluster, data, tmp_path):
    root = data["root"]
    s = ray_bias(
        root / "gallery",
        root / "reference",
        ALPHA,
        K,
        "cosine",
        str(tmp_path / "out"),
        gpus_per_task=1,
        _task_delay=0.3,
        **PLAN,
    )
    windows = s["task_windows"]
    assert {w[3] for w in windows} == {"0", "1"}
    for i, a in enumerate(windows):
        for b in windows[i + 1 :]:
            if a[1] < b[2] and b[1] < a[2]:  # ran at the same time: different GPUs
                assert a[3] != b[3], (a, b)
    _check_output(str(tmp_path / "out"), data)  # no CUDA here: the CPU path, still byte-identical


def test_cli_engine_ray_end_to_end(cluster, data, tmp_path):
    """The shell: `nnn bias --engine ray` writes a manifest folder that search, eval and info accept, equal to
    `--engine local` byte for byte; `nnn search --engine ray` equals local search; engine options need ray."""
    import json

    import h5py
    from typer.testing import CliRunner

    from nnn_cli.cli import app

    root, run = data["root"], CliRunner()
    args = ["bias", str(root / "gallery"), "-r", str(root / "reference"), "-a", str(ALPHA), "-k", str(K)]
    res = run.invoke(
        app,
        args
        + [
            "--engine",
            "ray",
            "--block-rows",
            "2048",
            "--partition-rows",
            "8192",
            "-o",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["blocks_computed"] == 3
    res = run.invoke(app, args + ["-o", str(tmp_path / "local.h5")])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "local.h5") as f:
        local_bias = f["bias"][()]
    assert np.array_equal(read_manifest_bias(tmp_path / "out").bias, local_bias)
    info = run.invoke(app, ["info", str(tmp_path / "out"), "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["attrs"]["complete"] is True
    results = {}
    for name, bias, engine in (
        ("local", tmp_path / "local.h5", "local"),
        ("manifest", tmp_path / "out", "local"),
        ("ray", tmp_path / "out", "ray"),
    ):
        out = tmp_path / f"res_{name}.h5"
        res = run.invoke(
            app,
            [
                "search",
                str(root / "queries.npy"),
                "-g",
                str(root / "gallery"),
                "--bias",
                str(bias),
                "-n",
                "7",
                "-o",
                str(out),
                "--engine",
                engine,
                "--partition-rows",
                "8192",
            ]
            if engine == "ray"
            else [
                "search",
                str(root / "queries.npy"),
                "-g",
                str(root / "gallery"),
                "--bias",
                str(bias),
                "-n",
                "7",
                "-o",
                str(out),
            ],
        )
        assert res.exit_code == 0, res.output
        with h5py.File(out) as f:
            results[name] = (f["scores"][()], f["indices"][()])
    for name in ("manifest", "ray"):
        assert np.array_equal(results[name][0], results["local"][0])
        assert np.array_equal(results[name][1], results["local"][1])
    bad = run.invoke(app, args + ["--resume", "-o", str(tmp_path / "x.h5")])
    assert bad.exit_code == 2 and "run folders" in bad.output and not (tmp_path / "x.h5").exists()
    # one pipeline: Ray tasks can write a bias file too, equal to --engine local byte for byte
    res = run.invoke(app, args + ["--engine", "ray", "--block-rows", "2048", "-o", str(tmp_path / "x.h5")])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "x.h5") as f:
        assert np.array_equal(f["bias"][()], local_bias) and f.attrs["alpha"] == ALPHA


def _raw(root, name):
    """The raw (unnormalised) rows of a shard folder, as written by the data fixture."""
    files = sorted((root / name).glob("*.npy"), key=lambda f: int(f.stem))
    return np.concatenate([np.load(f) for f in files])


def _shards(folder, arr, shard=1500):
    folder.mkdir()
    for i, s in enumerate(range(0, len(arr), shard)):
        np.save(folder / f"{i}.npy", arr[s : s + shard])
    return folder


def test_index_ivf_cli_equals_local(cluster, data, tmp_path):
    """`nnn bias --engine ray --index ivf`: the index is built once on the driver, shipped to the tasks, and
    the result equals `--engine local --index ivf` (same deterministic build, list-major probing) byte for byte."""
    import h5py
    from typer.testing import CliRunner

    from nnn_cli.cli import app
    from nnn_cli.scale.index.listscan import LIST_ROW_BLOCK

    root, run = data["root"], CliRunner()
    args = [
        "bias",
        str(root / "gallery"),
        "-r",
        str(root / "reference"),
        "-a",
        str(ALPHA),
        "-k",
        str(K),
        "--index",
        "ivf",
        "--nlist",
        "64",
        "--nprobe",
        "8",
    ]
    res = run.invoke(
        app, args + ["--engine", "ray", "--block-rows", str(LIST_ROW_BLOCK), "-o", str(tmp_path / "out"), "--json"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["blocks_computed"] == 1 and summary["tasks_run"] == 1  # one task per block (of 65,536 rows)
    assert summary["index"]["index"] == "ivf" and summary["index"]["index_nprobe"] == 8
    assert summary["index_rows_recomputed_exactly"] == 0
    assert (tmp_path / "out" / "index.faiss").is_file()
    res = run.invoke(app, args + ["-o", str(tmp_path / "local.h5")])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "local.h5") as f:
        local_bias, local_topk = f["bias"][()], f["topk"][()]
    got = read_manifest_bias(tmp_path / "out", with_topk=True)
    assert np.array_equal(got.bias, local_bias) and np.array_equal(got.attrs["topk"], local_topk)
    assert not np.array_equal(got.bias, data["bias"])  # approximate indeed (nprobe 8 of 64)
    assert got.attrs["index"] == "ivf" and got.attrs["index_nprobe"] == 8
    m = read_manifest(str(tmp_path / "out"))
    assert m["params"]["index"] == {"index": "ivf", "nlist": 64, "nprobe": 8, "ef_search": None, "recall": None}
    with pytest.raises(MismatchError, match="params"):  # --resume checks the index options
        ray_bias(
            root / "gallery",
            root / "reference",
            ALPHA,
            K,
            "cosine",
            str(tmp_path / "out"),
            resume=True,
            block_rows=LIST_ROW_BLOCK,
            index={"index": "ivf", "nlist": 64, "nprobe": 16},
        )
    s = ray_bias(
        root / "gallery",
        root / "reference",
        ALPHA,
        K,
        "cosine",
        str(tmp_path / "out"),
        resume=True,
        block_rows=LIST_ROW_BLOCK,
        index={"index": "ivf", "nlist": 64, "nprobe": 8},
    )
    assert s["blocks_skipped"] == 1 and s["blocks_computed"] == 0
    # --recall: nprobe tuned on the driver (the same gallery sample as locally), recorded, same result as local
    from nnn_cli.scale.index.choose import choose_index
    from nnn_cli.scale.index.steps import indexed_reference_topk

    s = ray_bias(
        root / "gallery",
        root / "reference",
        ALPHA,
        K,
        "cosine",
        str(tmp_path / "tuned"),
        block_rows=LIST_ROW_BLOCK,
        index={"index": "ivf", "nlist": 64, "recall": 0.9},
    )
    tuned = s["index"]["index_tuned"]
    assert tuned["knob"] == "probe_gap" and tuned["reached"] and s["index"]["index_probe_gap"] == tuned["value"]
    assert s["index"]["index_nprobe"] == tuned["fixed_nprobe_equivalent"]
    want, _ = indexed_reference_topk(
        open_embeddings(root / "gallery"),
        open_embeddings(root / "reference"),
        K,
        "cosine",
        choose_index("ivf", N_GALLERY, N_REFERENCE, D, K, 64, recall=0.9),
    )
    assert np.array_equal(read_manifest_bias(str(tmp_path / "tuned"), with_topk=True).attrs["topk"], want)
    bad = run.invoke(app, args + ["--engine", "ray", "--block-rows", "4096", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and str(LIST_ROW_BLOCK) in bad.output
    bad = run.invoke(app, args[:-6] + ["--index", "IVF64,SQ8", "--engine", "ray", "-o", str(tmp_path / "y")])
    assert bad.exit_code == 2 and "quantized" in bad.output


def test_index_two_level_ivf_ray_equals_local(cluster, data, tmp_path):
    """From TWO_LEVEL_MIN_LISTS lists the build assigns and the tasks probe through two levels (coarse.py), at a
    fixed nprobe and with a tuned probe gap: the Ray tasks (one thread each, in their own processes, deriving
    the centroid groups themselves) give the bytes of a local run."""
    from nnn_cli.scale.index.choose import choose_index
    from nnn_cli.scale.index.coarse import TWO_LEVEL_MIN_LISTS
    from nnn_cli.scale.index.listscan import LIST_ROW_BLOCK
    from nnn_cli.scale.index.steps import indexed_reference_topk

    root, nlist = data["root"], TWO_LEVEL_MIN_LISTS
    for name, index in (
        ("fixed", {"index": "ivf", "nlist": nlist, "nprobe": 8}),
        ("tuned", {"index": "ivf", "nlist": nlist, "recall": 0.9}),
    ):
        s = ray_bias(
            root / "gallery",
            root / "reference",
            ALPHA,
            K,
            "cosine",
            str(tmp_path / name),
            block_rows=LIST_ROW_BLOCK,
            index=index,
        )
        choice = choose_index(
            "ivf", N_GALLERY, N_REFERENCE, D, K, nlist, index.get("nprobe"), recall=index.get("recall")
        )
        want, run_ = indexed_reference_topk(
            open_embeddings(root / "gallery"), open_embeddings(root / "reference"), K, "cosine", choice
        )
        assert s["index"]["index_nlist"] == nlist
        assert s["index"].get("index_probe_gap") == run_.to_dict().get("index_probe_gap")
        assert np.array_equal(read_manifest_bias(str(tmp_path / name), with_topk=True).attrs["topk"], want)


def test_index_hnsw_same_index_as_local(cluster, data, tmp_path):
    """HNSW (built with several threads, so not reproducible build to build): the tasks' top-k equals a local
    search of the very index the driver built and stored (index.faiss) byte for byte."""
    import faiss

    from nnn_cli.core.nnn import bias_from_topk
    from nnn_cli.scale.index.steps import approximate_reference_topk

    root = data["root"]
    s = ray_bias(
        root / "gallery",
        root / "reference",
        ALPHA,
        K,
        "cosine",
        str(tmp_path / "out"),
        block_rows=4096,
        index={"index": "hnsw", "ef_search": 32},
    )
    assert s["blocks_computed"] == 2 and s["index"]["index"] == "hnsw"
    assert s["index_deserializations"] == len({w[0] for w in s["task_windows"]})  # once per worker process
    index = faiss.read_index(str(tmp_path / "out" / "index.faiss"))
    assert index.hnsw.efSearch == 32
    faiss.omp_set_num_threads(1)
    try:
        topk, short = approximate_reference_topk(index, data["G"], None, K)
    finally:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
    assert short == 0
    got = read_manifest_bias(str(tmp_path / "out"), with_topk=True)
    assert np.array_equal(got.attrs["topk"], topk) and np.array_equal(got.bias, bias_from_topk(topk, ALPHA, K))


def test_append_and_update_equal_a_fresh_run(cluster, data, tmp_path):
    """A run over part of the gallery and part of the reference, then `--update --reference-add` (the rest of the
    reference) and `--append-to` (the rest of the gallery), both through the CLI: byte-identical to a fresh run
    over the whole gallery and reference (the module's local result, which the fresh ray run equals)."""
    from typer.testing import CliRunner

    from nnn_cli.cli import app
    from nnn_cli.data.locks import exclusive_lock
    from nnn_cli.data.manifest import load_bias
    from nnn_cli.errors import BusyError

    root, run, out = data["root"], CliRunner(), tmp_path / "run"
    g, r = _raw(root, "gallery"), _raw(root, "reference")
    ga, gb = _shards(tmp_path / "ga", g[:3000]), _shards(tmp_path / "gb", g[3000:])  # 3000: off the tile grid
    ra, rb = _shards(tmp_path / "ra", r[:13000]), _shards(tmp_path / "rb", r[13000:])
    ray_bias(ga, ra, ALPHA, K, "cosine", str(out), **PLAN)
    before = read_manifest(str(out))
    # --update: every block's stored top-k merged with its top-k against the new queries
    res = run.invoke(
        app, ["bias", str(ga), "--update", str(out), "--reference-add", str(rb), "--engine", "ray", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["blocks_rewritten"] == 2
    m = read_manifest(str(out))
    assert m["generation"] == 1 and m["inputs"]["reference"]["parts"][1]["rows"] == N_REFERENCE - 13000
    assert m["blocks_done"]["0"]["file"] == "blocks/bias_000000.g1.npy"
    assert not (out / before["blocks_done"]["0"]["file"]).exists()  # replaced files removed after the commit
    want = compute_bias(data["G"][:3000], data["R"], ALPHA, K)
    assert_same_to_rounding(load_bias(out).bias, want)
    # --append-to: new blocks against both reference parts (the later one reopened from its recorded URL)
    res = run.invoke(app, ["bias", str(gb), "-r", str(ra), "--append-to", str(out), "--engine", "ray", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["blocks_added"] == 1
    got = read_manifest_bias(str(out), with_topk=True)
    assert got.attrs["gallery_parts_added"] == 1 and got.attrs["reference_parts_added"] == 1
    assert_same_to_rounding(got.bias, data["bias"])
    assert_same_to_rounding(got.attrs["topk"], data["topk"])
    m = read_manifest(str(out))
    assert m["blocks_done"]["2"]["rows"] == [3000, N_GALLERY] and m["blocks_done"]["1"]["rows"] == [2048, 3000]
    info = run.invoke(app, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    attrs = json.loads(info.stdout)["attrs"]
    assert attrs["complete"] and [h["op"] for h in attrs["history"]] == ["reference-add", "append"]
    # refusals: another reference, a second writer (the folder's lock), a run without top-k, an indexed run
    with pytest.raises(MismatchError, match="not the reference"):
        ray_append(gb, rb, str(out))
    with exclusive_lock(out / "manifest.json"), pytest.raises(BusyError):
        ray_append(gb, ra, str(out), wait=0)
    ray_bias(ga, ra, ALPHA, K, "cosine", str(tmp_path / "notopk"), save_topk=False, **PLAN)
    with pytest.raises(ParameterError, match="without top-k"):
        ray_add_reference(ga, rb, str(tmp_path / "notopk"))


def test_embed_hdf5_through_ray_equals_local_and_same_json(cluster, data, tmp_path):
    """`nnn embed`'s HDF5 layout (embeddings + ids) goes through --engine ray (no conversion): the run folder and a
    bias file from Ray tasks equal --engine local byte for byte, and --json has the same keys on both engines."""
    import h5py
    from typer.testing import CliRunner

    from nnn_cli.cli import app

    g = _raw(data["root"], "gallery")
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["embeddings"] = g
        f.create_dataset("ids", data=np.array([f"img{i}" for i in range(len(g))], dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip
        f.attrs["model"] = "test"
    run = CliRunner()
    args = ["bias", str(tmp_path / "g.h5"), "-r", str(data["root"] / "reference"), "-a", str(ALPHA), "-k", str(K)]
    plan = ["--block-rows", "2048", "--partition-rows", "8192", "--json"]
    docs = {}
    for engine in ("local", "ray"):
        res = run.invoke(app, args + ["--engine", engine, "-o", str(tmp_path / f"run_{engine}"), *plan])
        assert res.exit_code == 0, res.output
        docs[engine] = json.loads(res.stdout)
    assert set(docs["local"]) == set(docs["ray"]) and docs["ray"]["engine"] == "ray"
    assert isinstance(docs["ray"]["seconds"], float) and isinstance(docs["local"]["seconds"], float)
    res = run.invoke(app, args + ["-o", str(tmp_path / "local.h5")])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "local.h5") as f:
        want = f["bias"][()]
    assert np.array_equal(want, data["bias"])
    for engine in ("local", "ray"):
        assert np.array_equal(read_manifest_bias(tmp_path / f"run_{engine}").bias, want)
    res = run.invoke(app, args + ["--engine", "ray", "-o", str(tmp_path / "ray.h5")])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "ray.h5") as f:
        assert np.array_equal(f["bias"][()], want) and list(f["ids"][:2].astype(str)) == ["img0", "img1"]


def test_queries_and_reference_fraction_on_ray(cluster, data, tmp_path):
    """`nnn bias --engine ray --queries Q --reference-fraction F --seed S` goes through the pipeline as on
    --engine local: the same share, the same biases bit for bit, the same leak report and reference sketch."""
    import h5py
    from typer.testing import CliRunner

    from nnn_cli.cli import app

    np.save(tmp_path / "q.npy", _raw(data["root"], "reference")[:40])  # 40 queries copied into the reference
    run = CliRunner()
    args = ["bias", str(data["root"] / "gallery"), "-r", str(data["root"] / "reference"), "-a", str(ALPHA),
            "-k", str(K), "--queries", str(tmp_path / "q.npy"), "--reference-fraction", "0.5", "--seed", "3", "--json"]  # fmt: skip
    docs = {}
    for engine in ("local", "ray"):
        res = run.invoke(app, args + ["--engine", engine, "-o", str(tmp_path / f"{engine}.h5")])
        assert res.exit_code == 0, res.output
        docs[engine] = json.loads(res.stdout)
    assert docs["ray"]["engine"] == "ray" and docs["ray"]["leak"] == docs["local"]["leak"]
    assert docs["ray"]["n_reference"] == N_REFERENCE // 2 and 0 < docs["ray"]["leak"]["near_duplicates"] < 40
    with h5py.File(tmp_path / "local.h5") as f, h5py.File(tmp_path / "ray.h5") as g:
        assert np.array_equal(f["bias"][()], g["bias"][()]) and g.attrs["reference_fraction"] == 0.5
        assert np.array_equal(f["leak_sketch_codes"][()], g["leak_sketch_codes"][()])
    # --no-leak-sketch on Ray: the same biases, no sketch (the sink's datasets are the job's, not the engine's)
    res = run.invoke(app, args + ["--engine", "ray", "-o", str(tmp_path / "plain.h5"), "--no-leak-sketch"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "ray.h5") as f, h5py.File(tmp_path / "plain.h5") as g:
        assert np.array_equal(f["bias"][()], g["bias"][()]) and "leak_sketch_codes" not in g
        assert "leak_sketch_rows" not in g.attrs and g.attrs["reference_fraction"] == 0.5


def test_loopback_only(cluster, data):
    """Last: after every job above, each socket the cluster's processes (and this driver) listen on is loopback."""
    pids = {p.pid for p in cluster.descendants()} | {os.getpid()}
    socks = listening_sockets(pids)
    assert len({pid for pid, _, _ in socks}) >= 3, socks  # GCS, raylet, workers at least
    assert {ip for _, ip, _ in socks} == {"127.0.0.1"}, socks


def test_index_list_prefix_ray_equals_local(cluster, tmp_path):
    """A tuned list prefix (lists ordered by centroid score on the driver, the prefix recorded and shipped with
    the probe gap): the Ray tasks scan the same heads of the same lists and give the bytes of a local run."""
    from nnn_cli.scale.index.choose import choose_index
    from nnn_cli.scale.index.listscan import LIST_ROW_BLOCK
    from nnn_cli.scale.index.steps import indexed_reference_topk

    def clustered(n, seed):  # bench_scale.py's shape of data, where the heads of the lists hold the neighbours
        centres = np.random.default_rng(7).standard_normal((8, D)).astype(np.float32)
        rng = np.random.default_rng(seed)
        x = centres[rng.integers(0, 8, n)] + 1.2 * rng.standard_normal((n, D)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    np.save(tmp_path / "g.npy", clustered(3000, 1))
    np.save(tmp_path / "r.npy", clustered(12000, 2))
    index = {"index": "ivf", "nlist": 64, "recall": 0.9}
    s = ray_bias(
        tmp_path / "g.npy",
        tmp_path / "r.npy",
        ALPHA,
        K,
        "cosine",
        str(tmp_path / "out"),
        block_rows=LIST_ROW_BLOCK,
        index=index,
    )
    choice = choose_index("ivf", 3000, 12000, D, K, 64, recall=0.9)
    want, run_ = indexed_reference_topk(
        open_embeddings(tmp_path / "g.npy"), open_embeddings(tmp_path / "r.npy"), K, "cosine", choice
    )
    assert choice.probe_prefix is not None and choice.probe_prefix < 1  # the prefix is in play
    assert s["index"]["index_probe_prefix"] == choice.probe_prefix == run_.to_dict()["index_probe_prefix"]
    assert s["index"]["index_probe_gap"] == choice.probe_gap
    assert np.array_equal(read_manifest_bias(str(tmp_path / "out"), with_topk=True).attrs["topk"], want)
