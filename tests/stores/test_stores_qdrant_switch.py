"""Qdrant's replace is an alias switch: a run killed (SIGKILL) at the switch, after the new collection is
written, leaves the name on the old collection, readable and searched as before; where the name was a plain
collection (deleted just before the alias is made, the one step Qdrant cannot make atomic) the name resolves
to the new, complete collection, and the next write makes the alias.  Qdrant in local mode, a temporary folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
from qdrant_client import QdrantClient, models
from store_cases import assert_ok, assert_same_ranking, jsonl_hits, run

# `nnn` in a child process whose alias switch is a SIGKILL: it dies with the new collection whole and marked
KILLED_AT_SWITCH = """
import os, signal, sys
import qdrant_client
def die(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
qdrant_client.QdrantClient.update_collection_aliases = die
from nnn_cli.cli import main
sys.argv = ["nnn", *sys.argv[1:]]
main()
"""


def killed_at_switch(*args) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AT_SWITCH, *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)


def collections(path) -> dict[str, str | None]:
    """Collection names (alias -> target for aliases, None for collections)."""
    client = QdrantClient(path=str(path))
    try:
        out: dict[str, str | None] = {c.name: None for c in client.get_collections().collections}
        out.update({a.alias_name: a.collection_name for a in client.get_aliases().aliases})
        return out
    finally:
        client.close()


def search(hub_files, uri, table):
    return jsonl_hits(
        assert_ok(
            run("search", hub_files["queries"], "--store", uri, "--table", table, "--top-k", 10, "-o", "-")
        ).stdout
    )


def test_replace_killed_at_switch_leaves_old_collection(tmp_path, hub_files, hub_data):
    path = tmp_path / "q"
    uri = f"qdrant:{path}"
    bias_a, bias_b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(bias_a, np.zeros(len(hub_data.gallery), np.float32))
    np.save(bias_b, np.linspace(0, 0.5, len(hub_data.gallery), dtype=np.float32))
    assert_ok(run("export", hub_files["gallery"], "--bias", bias_a, "--to", uri, "--table", "items", "--force"))
    before = search(hub_files, uri, "items")
    names = collections(path)
    old = names["items"]
    killed_at_switch("export", hub_files["gallery"], "--bias", bias_b, "--to", uri, "--table", "items", "--replace",
                     "--force")  # fmt: skip
    after_kill = collections(path)
    assert after_kill["items"] == old and len(after_kill) == len(names) + 1  # the new one, whole, not switched
    assert search(hub_files, uri, "items") == before
    # the next write switches and clears what the killed run left
    assert_ok(run("export", hub_files["gallery"], "--bias", bias_b, "--to", uri, "--table", "items", "--replace",
                  "--force"))  # fmt: skip
    final = collections(path)
    assert final["items"] not in (None, old) and len(final) == 2
    assert search(hub_files, uri, "items") != before


def test_plain_collection_killed_between_delete_and_alias_resolves_to_new(tmp_path, hub_files, hub_data):
    path = tmp_path / "q"
    uri = f"qdrant:{path}"
    g = hub_data.gallery
    client = QdrantClient(path=str(path))
    try:  # a user's plain collection, vectors named
        client.create_collection(
            "docs", vectors_config={"embedding": models.VectorParams(size=g.shape[1], distance=models.Distance.COSINE)}
        )
        client.upsert(
            "docs",
            [
                models.PointStruct(id=i, vector={"embedding": g[i].tolist()}, payload={"title": f"t{i}"})
                for i in range(len(g))
            ],
        )
    finally:
        client.close()
    args = ("bias", uri, "--table", "docs", "--column", "embedding", "-r", hub_files["reference"], "--in-place",
            "--alpha", "0.75", "--k", "16")  # fmt: skip
    killed_at_switch(*args)
    names = collections(path)
    assert "docs" not in names  # the plain collection went just before the alias would have been made
    assert [n for n in names if n.startswith("docs__nnn_")]
    # the name resolves to the new, complete collection: searched, described, and the next run makes the alias
    via_orphan = search(hub_files, uri, "docs")
    desc = json.loads(assert_ok(run("info", uri, "--table", "docs", "--json")).stdout)
    assert desc["rows"] == len(g) and desc["nnn"]["k"] == 16
    assert_ok(run(*args))
    names = collections(path)
    assert names["docs"] is not None and len(names) == 2
    assert_same_ranking(via_orphan, search(hub_files, uri, "docs"))
