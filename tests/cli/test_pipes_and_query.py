"""Issue 15 from the shell: the README's pipe, `nnn query`, ids options, quiet, closed pipes, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli import app

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
NNN = f"{sys.executable} -m nnn_cli"


def sh(script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", "set -o pipefail; " + script], env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def sample_bias(tmp_path_factory):
    out = tmp_path_factory.mktemp("bias") / "b.h5"
    res = CliRunner().invoke(
        app,
        [
            "bias",
            str(SAMPLE / "gallery.h5"),
            "-r",
            str(SAMPLE / "reference.h5"),
            "-a",
            "0.875",
            "-k",
            "32",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    return out


def test_readme_pipe_echo_embed_search(sample_bias):
    pytest.importorskip("sentence_transformers")
    res = sh(
        f'echo "a text editor for the terminal" | {NNN} embed - -o - -q | '
        f"{NNN} search - --gallery {SAMPLE / 'gallery.h5'} --bias {sample_bias} --top-k 3 -o -"
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["query_id"] == "1" and [r["rank"] for r in rec["results"]] == [1, 2, 3]
    assert all("id" in r for r in rec["results"])


def test_nnn_query_uses_the_gallery_model(sample_bias):
    pytest.importorskip("sentence_transformers")
    res = sh(
        f'{NNN} query "a text editor for the terminal" "an image viewer" --gallery {SAMPLE / "gallery.h5"} '
        f"--bias {sample_bias} -n 4 --json"
    )
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["query_text"] for r in recs] == ["a text editor for the terminal", "an image viewer"]
    assert all(len(r["results"]) == 4 and r["debiased"] for r in recs)
    table = sh(f'{NNN} query "an image viewer" --gallery {SAMPLE / "gallery.h5"} -n 2')
    assert table.returncode == 0 and "plain score" in table.stdout


def test_gallery_and_query_ids_options(hub_files, tmp_path):
    p = hub_files
    (tmp_path / "gids.txt").write_text("".join(f"item-{i}\n" for i in range(300)))
    (tmp_path / "qids.txt").write_text("".join(f"query-{i}\n" for i in range(600)))
    res = CliRunner().invoke(
        app,
        [
            "search",
            str(p["queries_npy"]),
            "-g",
            str(p["gallery_npy"]),
            "-n",
            "2",
            "-o",
            "-",
            "--gallery-ids",
            str(tmp_path / "gids.txt"),
            "--query-ids",
            str(tmp_path / "qids.txt"),
        ],
    )
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.splitlines()[5])
    assert rec["query_id"] == "query-5" and rec["results"][0]["id"].startswith("item-")
    (tmp_path / "short.txt").write_text("a\nb\n")
    bad = CliRunner().invoke(
        app,
        [
            "search",
            str(p["queries_npy"]),
            "-g",
            str(p["gallery_npy"]),
            "-o",
            "-",
            "--gallery-ids",
            str(tmp_path / "short.txt"),
        ],
    )
    assert bad.exit_code == 2 and "short.txt" in bad.output


def test_jsonl_output_inferred_from_the_name(hub_files, tmp_path):
    p = hub_files
    out = tmp_path / "res.jsonl"
    res = CliRunner().invoke(app, ["search", str(p["queries"]), "-g", str(p["gallery"]), "-n", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text().splitlines()[0])["results"][0]["rank"] == 1


@pytest.mark.parametrize(
    "command", ["info {g}", "tune -Q {q} -g {g} -t {t} -r {r} -o {o}", "eval -Q {q} -g {g} -t {t} --methods baseline"]
)
def test_every_command_ends_quietly_on_a_closed_pipe(command, tmp_path):
    args = command.format(
        g=SAMPLE / "tune_gallery.h5",
        q=SAMPLE / "tune_queries.h5",
        t=SAMPLE / "tune_truth.npy",
        r=SAMPLE / "reference.h5",
        o=tmp_path / "p.json",
    )
    res = sh(f"{NNN} {args} | head -c 1 > /dev/null; echo ${{PIPESTATUS[0]}}")
    assert res.stdout.strip() == "0", res.stderr
    assert "Error" not in res.stderr and "Traceback" not in res.stderr and "Exception" not in res.stderr


def test_quiet_means_quiet(tmp_path):
    res = sh(
        f"{NNN} tune -Q {SAMPLE / 'tune_queries.h5'} -g {SAMPLE / 'tune_gallery.h5'} -t {SAMPLE / 'tune_truth.npy'} "
        f"-r {SAMPLE / 'reference.h5'} -o {tmp_path / 'p.json'} -q"
    )
    assert res.returncode == 0 and res.stdout == "" and res.stderr == ""


def test_help_is_clean():
    for command in ("bias", "search", "eval", "tune", "embed", "query", "info", "attribute-bias", "truth-from-pairs"):
        res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0
        assert "<bool>" not in res.output and "pass pass" not in res.output and "Example" in res.output


def test_report_without_matplotlib_is_tables_only(hub_files, tmp_path):
    code = (
        "import sys, builtins; real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name.split('.')[0] == 'matplotlib': raise ImportError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "from nnn_cli.cli import main; main()"
    )
    p = hub_files
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "eval",
            "-Q",
            str(p["queries"]),
            "-g",
            str(p["gallery"]),
            "-t",
            str(p["truth"]),
            "-r",
            str(p["reference"]),
            "-a",
            "0.75",
            "-k",
            "16",
            "--report",
            str(tmp_path / "r.html"),
            "--plots",
            str(tmp_path / "pics"),
        ],
        env={**ENV, "NNN_PROGRAM": "nnn"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "matplotlib is not installed" in res.stderr
    assert "matplotlib is not installed" in (tmp_path / "r.html").read_text()
    assert not (tmp_path / "pics").exists()


def test_block_size_is_deprecated_with_a_note(hub_files, tmp_path):
    p = hub_files
    args = ["bias", str(p["gallery"]), "-r", str(p["reference"]), "-a", "0.5", "-k", "4"]
    a = CliRunner().invoke(app, args + ["-o", str(tmp_path / "a.h5"), "--block-size", "7"])
    b = CliRunner().invoke(app, args + ["-o", str(tmp_path / "b.h5")])
    assert a.exit_code == 0 and b.exit_code == 0
    assert "--block-size is deprecated" in a.output
    import h5py

    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        assert np.array_equal(fa["bias"][()], fb["bias"][()])
