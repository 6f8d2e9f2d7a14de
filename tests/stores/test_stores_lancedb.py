"""LanceDB as a source and a sink: on a temporary folder and on moto's S3 server (127.0.0.1, started by the
test).  Export then `nnn search --store` equals `nnn search`; in place the user's columns stay byte-identical;
--only-new equals a fresh run; a killed export leaves the old version; bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")
pa = pytest.importorskip("pyarrow")
from store_cases import assert_clean_error, assert_ok, assert_same_ranking, jsonl_hits, run

ALPHA, K = "0.75", "16"
os.environ.setdefault("LANCEDB_LOG", "error")  # LanceDB's "no existing dataset" warnings


@pytest.fixture
def biased(tmp_path, hub_files):
    out = tmp_path / "bias.h5"
    assert_ok(run("bias", hub_files["gallery"], "-r", hub_files["reference"], "--alpha", ALPHA, "--k", K, "-o", out))
    return out


def _fsl(values):
    return pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(values, np.float32).reshape(-1)), values.shape[1]
    )


def user_table(db, name, gallery, rows):
    """A table as a user makes it: their own id, title and bytes columns beside the vectors."""
    rows = list(rows)
    return pa.table(
        {
            "id": pa.array([f"doc-{i}" for i in rows]),
            "title": pa.array([f"title '{i}'; --" for i in rows]),
            "blob": pa.array([bytes([i % 256, 0, 7]) for i in rows], pa.binary()),
            "embedding": _fsl(gallery[rows]),
        }
    )


def test_export_then_search_store_equals_search(tmp_path, hub_files, biased):
    uri = f"lancedb:{tmp_path / 'db'}"
    assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", uri, "--table", "items"))
    via_store = assert_ok(
        run("search", hub_files["queries"], "--store", uri, "--table", "items", "--top-k", 10, "-o", "-")
    )
    plain = assert_ok(
        run(
            "search",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery"],
            "--bias",
            biased,
            "--top-k",
            10,
            "-o",
            "-",
        )
    )
    assert_same_ranking(jsonl_hits(via_store.stdout), jsonl_hits(plain.stdout))
    first = json.loads(via_store.stdout.splitlines()[0])
    assert first["results"][0]["id"] == f"g{first['results'][0]['index']}"
    desc = json.loads(assert_ok(run("info", uri, "--table", "items", "--json")).stdout)
    assert desc["kind"] == "lancedb" and desc["rows"] == 300 and desc["nnn"]["k"] == 16
    assert desc["nnn"]["reference_fingerprint"] == h5py.File(biased).attrs["reference_fingerprint"]
    # refused without --replace; --replace is one new version; l2 ranks as inner product
    assert_clean_error(
        run("export", hub_files["gallery"], "--bias", biased, "--to", uri, "--table", "items"), "already exists"
    )
    version = lancedb.connect(str(tmp_path / "db")).open_table("items").version
    assert_ok(
        run(
            "export",
            hub_files["gallery"],
            "--bias",
            biased,
            "--to",
            uri,
            "--table",
            "items",
            "--replace",
            "--store-metric",
            "l2",
        )
    )
    assert lancedb.connect(str(tmp_path / "db")).open_table("items").version == version + 1
    via_l2 = assert_ok(
        run("search", hub_files["queries"], "--store", uri, "--table", "items", "--top-k", 10, "-o", "-")
    )
    assert_same_ranking(jsonl_hits(via_l2.stdout), jsonl_hits(plain.stdout), tol=1e-4)


def test_in_place_user_columns_identical_and_only_new(tmp_path, hub_files, hub_data, biased):
    g = hub_data.gallery
    path = tmp_path / "db"
    db = lancedb.connect(str(path))
    db.create_table("docs", user_table(db, "docs", g, range(250)))
    before = db.open_table("docs").to_arrow().select(["id", "title", "blob", "embedding"])
    uri = f"lancedb:{path}"
    args = ["bias", uri, "--table", "docs", "--column", "embedding", "-r", hub_files["reference"], "--in-place"]
    assert_ok(run(*args, "--alpha", ALPHA, "--k", K))
    after = lancedb.connect(str(path)).open_table("docs").to_arrow()
    assert after.select(["id", "title", "blob", "embedding"]).equals(before)
    file_bias = h5py.File(biased)["bias"][:]
    assert np.allclose(after.column("nnn_bias").to_numpy(), file_bias[:250], atol=1e-6)
    # new rows: stale until --only-new fills exactly them
    lancedb.connect(str(path)).open_table("docs").add(user_table(db, "docs", g, range(250, 300)))
    assert_clean_error(
        run("search", hub_files["queries"], "--store", uri, "--table", "docs", "-o", "-"),
        "50 of 300 rows have no nnn_bias",
    )
    old = lancedb.connect(str(path)).open_table("docs").to_arrow()
    res = assert_ok(run(*args, "--only-new", "--json"))
    assert json.loads(res.stdout)["rows"] == 50
    new = lancedb.connect(str(path)).open_table("docs").to_arrow()
    assert new.select(["id", "title", "blob", "embedding"]).equals(old.select(["id", "title", "blob", "embedding"]))
    assert new.column("nnn_bias").slice(0, 250).equals(old.column("nnn_bias").slice(0, 250))
    assert new.column("nnn_vector").slice(0, 250).equals(old.column("nnn_vector").slice(0, 250))
    assert np.allclose(new.column("nnn_bias").to_numpy(), file_bias, atol=1e-6)  # = a fresh run
    via_store = assert_ok(
        run("search", hub_files["queries"], "--store", uri, "--table", "docs", "--top-k", 10, "-o", "-")
    )
    plain = assert_ok(
        run(
            "search",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery"],
            "--bias",
            biased,
            "--top-k",
            10,
            "-o",
            "-",
        )
    )
    got = [[(i.replace("doc-", "g"), s) for i, s in q] for q in jsonl_hits(via_store.stdout)]
    assert_same_ranking(got, jsonl_hits(plain.stdout))


def test_killed_export_leaves_old_version(tmp_path, hub_files, biased):
    path = tmp_path / "db"
    uri = f"lancedb:{path}"
    assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", uri, "--table", "victim"))
    before = lancedb.connect(str(path)).open_table("victim").to_arrow()
    big = np.random.default_rng(0).standard_normal((400_000, 32)).astype(np.float32)
    np.save(tmp_path / "big.npy", big)
    np.save(tmp_path / "bb.npy", np.full(len(big), 0.1, np.float32))
    data = path / "victim.lance" / "data"
    n_files = len(list(data.iterdir()))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nnn_cli",
            "export",
            str(tmp_path / "big.npy"),
            "--bias",
            str(tmp_path / "bb.npy"),
            "--to",
            uri,
            "--table",
            "victim",
            "--replace",
            "--force",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill it once it writes the new data files
        if len(list(data.iterdir())) > n_files:
            break
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert lancedb.connect(str(path)).open_table("victim").to_arrow().equals(before)


def test_bad_inputs(tmp_path, hub_files, hub_data, biased):
    g = hub_data.gallery
    path = tmp_path / "db"
    db = lancedb.connect(str(path))
    db.create_table("docs", user_table(db, "docs", g, range(20)))
    uri = f"lancedb:{path}"
    base = ["bias", uri, "-r", hub_files["reference"], "--alpha", ALPHA, "--k", K, "--in-place"]
    assert_clean_error(run(*base, "--table", "nonesuch", "--column", "embedding"), "no such table")
    assert_clean_error(run(*base, "--table", "docs", "--column", "nocol"), "'nocol': no such column")
    assert_clean_error(run(*base, "--table", "docs", "--column", "title"), "not a vector column")
    assert_clean_error(run(*base, "--table", "docs", "--column", "embedding", "--id-column", "nokey"), "no such column")
    t = user_table(db, "x", g, range(5))
    dup = t.set_column(0, "id", pa.array(["a", "b", "a", "c", "d"]))
    db.create_table("dups", dup)
    assert_clean_error(run(*base, "--table", "dups", "--column", "embedding"), "id a appears more than once")
    nulls = t.set_column(
        3,
        "embedding",
        pa.FixedSizeListArray.from_arrays(
            pa.array(g[:5].reshape(-1)), 32, mask=pa.array([False, False, True, False, False])
        ),
    )
    db.create_table("nulls", nulls, on_bad_vectors="null")
    assert_clean_error(run(*base, "--table", "nulls", "--column", "embedding"), "row 2 has a NULL vector")
    small = t.set_column(3, "embedding", _fsl(g[:5, :8]))
    db.create_table("small", small)
    assert_clean_error(run(*base, "--table", "small", "--column", "embedding"), "d=8")
    for name in ("docs", "dups", "nulls", "small"):
        assert "nnn_bias" not in lancedb.connect(str(path)).open_table(name).schema.names
    assert_clean_error(
        run("search", hub_files["queries"], "--store", uri, "--table", "docs", "-o", "-"), "no nnn provenance"
    )


@pytest.fixture(scope="module")
def s3():
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="nnn-lance")
        yield port
    finally:
        server.stop()


def test_on_s3(s3, tmp_path, hub_files, biased):
    opts = [
        "--store-option", f"aws_endpoint=http://127.0.0.1:{s3}",
        "--store-option", "aws_access_key_id=testing",
        "--store-option", "aws_secret_access_key=testing",
        "--store-option", "aws_region=us-east-1",
        "--store-option", "allow_http=true",
    ]  # fmt: skip
    uri = "lancedb:s3://nnn-lance/db"
    assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", uri, "--table", "items", *opts))
    via_store = assert_ok(
        run("search", hub_files["queries"], "--store", uri, "--table", "items", "--top-k", 10, "-o", "-", *opts)
    )
    plain = assert_ok(
        run(
            "search",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery"],
            "--bias",
            biased,
            "--top-k",
            10,
            "-o",
            "-",
        )
    )
    assert_same_ranking(jsonl_hits(via_store.stdout), jsonl_hits(plain.stdout))
    desc = json.loads(assert_ok(run("info", uri, "--table", "items", "--json", *opts)).stdout)
    assert desc["rows"] == 300
    # an endpoint nobody listens on: one line within --io-timeout
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    bad = [o.replace(str(s3), str(dead)) for o in opts]
    t0 = time.monotonic()
    assert_clean_error(
        run("info", uri, "--table", "items", "--io-timeout", "3", *bad), "lancedb:s3://nnn-lance/db", secret="testing"
    )
    assert time.monotonic() - t0 < 30


def test_eval_store_beside_exact_nnn(tmp_path, hub_files, biased):
    uri = f"lancedb:{tmp_path / 'db'}"
    assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", uri, "--table", "items"))
    res = assert_ok(
        run(
            "eval",
            "--queries",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery"],
            "--truth",
            hub_files["truth"],
            "--bias",
            biased,
            "--store",
            uri,
            "--table",
            "items",
            "--json",
        )
    )
    out = json.loads(res.stdout)
    assert out["nnn_store"] == {key: out["nnn"][key] for key in ("R@1", "R@5", "R@10")}  # flat: exact
    assert out["nnn"]["R@1"] > out["baseline"]["R@1"]
    assert out["store"]["uri"] == uri and out["store"]["table"] == "items"


def test_query_store_equals_query(tmp_path):
    pytest.importorskip("sentence_transformers")
    from pathlib import Path

    sample = Path(__file__).resolve().parents[2] / "sample_data"
    bias = tmp_path / "bias.h5"
    assert_ok(run("bias", sample / "gallery.h5", "-r", sample / "reference.h5", "--alpha", ALPHA, "--k", K, "-o", bias))
    uri = f"lancedb:{tmp_path / 'db'}"
    assert_ok(run("export", sample / "gallery.h5", "--bias", bias, "--to", uri, "--table", "docs"))
    text = "a text editor for the terminal"
    via_store = assert_ok(run("query", text, "--store", uri, "--table", "docs", "-n", 5, "--json"))
    plain = assert_ok(run("query", text, "--gallery", sample / "gallery.h5", "--bias", bias, "-n", 5, "--json"))
    a, b = json.loads(via_store.stdout), json.loads(plain.stdout)
    assert a["debiased"] and a["model"] == b["model"]
    assert_same_ranking(
        [[(r["id"], r["score"]) for r in a["results"]]], [[(r["id"], r["score"]) for r in b["results"]]]
    )


def test_reference_add_in_place_equals_whole_reference(tmp_path, hub_data, biased):
    from store_cases import check_reference_add

    path = tmp_path / "db"
    db = lancedb.connect(str(path))
    db.create_table("grow", user_table(db, "grow", hub_data.gallery, range(300)))
    file_bias = h5py.File(biased)["bias"][:]
    check_reference_add(
        f"lancedb:{path}", "grow", "embedding", tmp_path, hub_data, file_bias,
        lambda: lancedb.connect(str(path)).open_table("grow").to_arrow().column("nnn_bias").to_numpy(),
    )  # fmt: skip


def test_in_place_sink_meets_the_pipeline_protocol(tmp_path, hub_files, hub_data, biased):
    """`nnn bias URI --in-place` commits through a pipeline Sink: a Sink by protocol, nothing visible before
    commit, and the committed biases equal the bias file's."""
    from nnn_cli.data.contracts import Sink
    from nnn_cli.data.inputs import open_embeddings
    from nnn_cli.data.stores import open_store
    from nnn_cli.data.stores.common import closing
    from nnn_cli.data.stores.records import Target, in_place_meta
    from nnn_cli.data.stores.sink import StoreBiasSink
    from nnn_cli.errors import ParameterError
    from nnn_cli.jobs.common import IndexOptions
    from nnn_cli.scale.pipeline import BiasParams
    from nnn_cli.scale.runs import compute_bias
    from nnn_cli.scale.scheduler import EngineOptions
    from nnn_cli.scale.stores import _gallery

    alpha, k = float(ALPHA), int(K)
    path = tmp_path / "db"
    db = lancedb.connect(str(path))
    db.create_table("docs", user_table(db, "docs", hub_data.gallery, range(120)))
    r_src = open_embeddings(hub_files["reference"])
    with closing(open_store(f"lancedb:{path}")) as store:
        target = Target("docs")
        ids, g_src = _gallery(store, target)
        sink = StoreBiasSink(
            store,
            target,
            ids,
            g_src,
            "cosine",
            lambda: in_place_meta(None, store, target, g_src, r_src, alpha, k, "cosine"),
        )
        assert isinstance(sink, Sink) and not sink.remote_writes
        with pytest.raises(ParameterError, match="--resume applies to run folders"):
            sink.check(True)
        sink.put_block(0, (0, 60), {"bias": np.zeros(60, np.float32), "topk": np.zeros((60, k), np.float32)})
        assert "nnn_bias" not in lancedb.connect(str(path)).open_table("docs").to_arrow().column_names
        out = compute_bias(g_src, r_src, BiasParams(alpha, k, "cosine", True), sink, EngineOptions(), IndexOptions())
    after = lancedb.connect(str(path)).open_table("docs").to_arrow()
    assert np.allclose(after.column("nnn_bias").to_numpy(), h5py.File(biased)["bias"][:120], atol=1e-6)
    assert np.allclose(out.bias, h5py.File(biased)["bias"][:120], atol=1e-6)
