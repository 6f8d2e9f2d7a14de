"""Qdrant (embedded local mode, a temporary folder) as a source and a sink.  Export then `nnn search --store`
equals `nnn search`; in place the user's vectors and payload stay identical; --only-new equals a fresh run;
a killed export leaves the old collection; a Cosine nnn_vector is refused; bad inputs exit 2 with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

pytest.importorskip("qdrant_client")
from qdrant_client import QdrantClient, models
from store_cases import assert_clean_error, assert_ok, assert_same_ranking, jsonl_hits, run

ALPHA, K = "0.75", "16"


@pytest.fixture
def biased(tmp_path, hub_files):
    out = tmp_path / "bias.h5"
    assert_ok(run("bias", hub_files["gallery"], "-r", hub_files["reference"], "--alpha", ALPHA, "--k", K, "-o", out))
    return out


def user_collection(path, name, gallery, rows, distance=models.Distance.COSINE):
    client = QdrantClient(path=str(path))
    try:
        if not client.collection_exists(name):
            client.create_collection(
                name, vectors_config={"embedding": models.VectorParams(size=gallery.shape[1], distance=distance)}
            )
        client.upsert(
            name,
            [
                models.PointStruct(
                    id=int(i),
                    vector={"embedding": gallery[i].tolist()},
                    payload={"title": f"title '{i}'; --", "tags": [i % 3, "x"]},
                )
                for i in rows
            ],
        )
    finally:
        client.close()


def snapshot(path, name, with_nnn=False):
    client = QdrantClient(path=str(path))
    try:
        out = {}
        offset = None
        while True:
            pts, offset = client.scroll(name, limit=1000, offset=offset, with_payload=True, with_vectors=True)
            for p in pts:
                payload = dict(p.payload or {})
                vec = dict(p.vector)
                if not with_nnn:
                    payload = {k: v for k, v in payload.items() if not k.startswith("nnn_")}
                    vec = {k: v for k, v in vec.items() if not k.startswith("nnn_")}
                out[p.id] = (payload, vec)
            if offset is None:
                return out
    finally:
        client.close()


def test_export_then_search_store_equals_search(tmp_path, hub_files, biased):
    uri = f"qdrant:{tmp_path / 'q'}"
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
    assert desc["kind"] == "qdrant" and desc["rows"] == 300 and desc["nnn"]["alpha"] == 0.75
    assert desc["nnn"]["reference_fingerprint"] == h5py.File(biased).attrs["reference_fingerprint"]
    assert_clean_error(
        run("export", hub_files["gallery"], "--bias", biased, "--to", uri, "--table", "items"), "already exists"
    )
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
    client = QdrantClient(path=str(tmp_path / "q"))
    try:  # the alias names one collection; the old one is gone
        assert [a.alias_name for a in client.get_aliases().aliases] == ["items"]
        assert len(client.get_collections().collections) == 1
    finally:
        client.close()
    via_l2 = assert_ok(
        run("search", hub_files["queries"], "--store", uri, "--table", "items", "--top-k", 10, "-o", "-")
    )
    assert_same_ranking(jsonl_hits(via_l2.stdout), jsonl_hits(plain.stdout), tol=1e-4)


def test_in_place_user_data_identical_and_only_new(tmp_path, hub_files, hub_data, biased):
    g = hub_data.gallery
    path = tmp_path / "q"
    user_collection(path, "docs", g, range(250))
    before = snapshot(path, "docs")
    uri = f"qdrant:{path}"
    args = ["bias", uri, "--table", "docs", "--column", "embedding", "-r", hub_files["reference"], "--in-place"]
    assert_ok(run(*args, "--alpha", ALPHA, "--k", K))
    assert snapshot(path, "docs") == before
    file_bias = h5py.File(biased)["bias"][:]
    full = snapshot(path, "docs", with_nnn=True)
    assert np.allclose([full[i][0]["nnn_bias"] for i in range(250)], file_bias[:250], atol=1e-6)
    user_collection(path, "docs", g, range(250, 300))  # new points through the alias
    assert_clean_error(
        run("search", hub_files["queries"], "--store", uri, "--table", "docs", "-o", "-"),
        "50 of 300 rows have no nnn_bias",
    )
    before = snapshot(path, "docs")
    res = assert_ok(run(*args, "--only-new", "--json"))
    assert json.loads(res.stdout)["rows"] == 50
    assert snapshot(path, "docs") == before
    after = snapshot(path, "docs", with_nnn=True)
    assert all(after[i][0]["nnn_bias"] == full[i][0]["nnn_bias"] for i in range(250))
    assert all(after[i][1]["nnn_vector"] == full[i][1]["nnn_vector"] for i in range(250))
    assert np.allclose([after[i][0]["nnn_bias"] for i in range(300)], file_bias, atol=1e-6)  # = a fresh run
    via_store = assert_ok(
        run("search", hub_files["queries"], "--store", uri, "--table", "docs", "--top-k", 10, "-o", "-")
    )
    plain = assert_ok(
        run(
            "search",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery_npy"],
            "--bias",
            biased,
            "--top-k",
            10,
            "-o",
            "-",
        )
    )
    assert_same_ranking(jsonl_hits(via_store.stdout), jsonl_hits(plain.stdout))


def test_killed_export_leaves_old_collection(tmp_path, hub_files, biased):
    path = tmp_path / "q"
    uri = f"qdrant:{path}"
    assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", uri, "--table", "victim"))
    before = snapshot(path, "victim", with_nnn=True)
    big = np.random.default_rng(0).standard_normal((60_000, 32)).astype(np.float32)
    np.save(tmp_path / "big.npy", big)
    np.save(tmp_path / "bb.npy", np.full(len(big), 0.1, np.float32))
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
    collections = path / "collection"
    while time.monotonic() < deadline and proc.poll() is None:  # kill it once the new collection is being filled
        if collections.is_dir() and len(list(collections.iterdir())) > 1:
            break
        time.sleep(0.005)
    time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert snapshot(path, "victim", with_nnn=True) == before


def test_bad_inputs(tmp_path, hub_files, hub_data):
    g = hub_data.gallery
    path = tmp_path / "q"
    user_collection(path, "docs", g, range(20))
    uri = f"qdrant:{path}"
    base = ["bias", uri, "-r", hub_files["reference"], "--alpha", ALPHA, "--k", K, "--in-place"]
    assert_clean_error(run(*base, "--table", "nonesuch", "--column", "embedding"), "no such collection")
    assert_clean_error(run(*base, "--table", "docs", "--column", "nocol"), "'nocol': no such vector")
    assert_clean_error(
        run(*base, "--table", "docs", "--column", "embedding", "--id-column", "nokey"), "no such payload field"
    )
    user_collection(path, "small", g[:, :8], range(5))
    assert_clean_error(run(*base, "--table", "small", "--column", "embedding"), "d=8")
    assert_clean_error(
        run("search", hub_files["queries"], "--store", uri, "--table", "docs", "-o", "-"), "no nnn provenance"
    )
    assert "nnn_bias" not in next(iter(snapshot(path, "docs", with_nnn=True).values()))[0]
    # a Cosine nnn_vector is refused at search
    client = QdrantClient(path=str(path))
    try:
        client.create_collection(
            "cos",
            vectors_config={"nnn_vector": models.VectorParams(size=33, distance=models.Distance.COSINE)},
            metadata={"nnn": {"metric": "cosine", "n_gallery": 1, "dim": 32}},
        )
        client.upsert("cos", [models.PointStruct(id=1, vector={"nnn_vector": [1.0] * 33}, payload={"nnn_bias": 0.1})])
    finally:
        client.close()
    assert_clean_error(
        run("search", hub_files["queries"], "--store", uri, "--table", "cos", "-o", "-"),
        "Cosine distance, which renormalises",
    )
    # the folder held by another client: busy, one line
    holder = QdrantClient(path=str(path))
    try:
        assert_clean_error(run("info", uri, "--table", "docs"), "another process has this Qdrant folder open")
    finally:
        holder.close()


def test_reference_add_in_place_equals_whole_reference(tmp_path, hub_data, biased):
    from store_cases import check_reference_add

    path = tmp_path / "q"
    user_collection(path, "grow", hub_data.gallery, range(300))
    file_bias = h5py.File(biased)["bias"][:]

    def read_bias():
        snap = snapshot(path, "grow", with_nnn=True)
        return np.array([snap[i][0]["nnn_bias"] for i in range(300)])

    check_reference_add(f"qdrant:{path}", "grow", "embedding", tmp_path, hub_data, file_bias, read_bias)
