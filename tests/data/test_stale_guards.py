"""Stale-file guards, provenance, `nnn info`, atomic outputs, refusing to overwrite inputs, determinism."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli.application import app
from nnn_cli.data.biasfile import read_bias
from nnn_cli.data.inputs import open_embeddings
from nnn_cli.data.outputs import atomic_output
from nnn_cli.errors import InputError

runner = CliRunner()
NNN = [sys.executable, "-m", "nnn_cli"]


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def one_error_line(res):
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output
    return lines[0]


@pytest.fixture
def made(tmp_path, hub_files, hub_data):
    """A bias file for the hub gallery, plus a gallery with one row changed and one with a row dropped."""
    bias = tmp_path / "bias.h5"
    res = run("bias", hub_files["gallery"], "-r", hub_files["reference"], "--alpha", 0.75, "--k", 8, "-o", bias, "-q")
    assert res.exit_code == 0, res.output
    changed = hub_data.gallery.copy()
    changed[17] = changed[18]
    np.save(tmp_path / "changed.npy", changed)
    np.save(tmp_path / "short.npy", hub_data.gallery[:-1])
    return {
        **hub_files,
        "bias": bias,
        "changed": tmp_path / "changed.npy",
        "short": tmp_path / "short.npy",
        "dir": tmp_path,
    }


# ---------------------------------------------------------------------------
# search / eval refuse a bias file made for another gallery or metric
# ---------------------------------------------------------------------------
def test_same_content_in_another_format_is_accepted(made):
    # the .npy holds the same float32 rows as the .h5 the bias was made from: same fingerprint
    res = run(
        "search", made["queries"], "-g", made["gallery_npy"], "-b", made["bias"], "-o", made["dir"] / "r.h5", "-q"
    )
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("command", ["search", "eval"])
def test_other_gallery_is_refused_unless_forced(made, command):
    out = made["dir"] / "r.h5"
    if command == "search":
        base = ["search", made["queries"], "-g", made["changed"], "-b", made["bias"], "-o", out, "-q"]
    else:
        base = ["eval", "-Q", made["queries"], "-g", made["changed"], "-t", made["truth"], "-b", made["bias"], "--json"]
    res = run(*base)
    assert res.exit_code == 2
    line = one_error_line(res)
    assert str(made["bias"]) in line and str(made["changed"]) in line and "fingerprint" in line and "--force" in line
    assert not out.exists()
    res = run(*base, "--force")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("command", ["search", "eval"])
def test_other_metric_is_refused_unless_forced(made, command):
    if command == "search":
        base = ["search", made["queries"], "-g", made["gallery"], "-b", made["bias"], "-o", made["dir"] / "r.h5", "-q"]
    else:
        base = ["eval", "-Q", made["queries"], "-g", made["gallery"], "-t", made["truth"], "-b", made["bias"], "--json"]
    res = run(*base, "--metric", "ip")
    assert res.exit_code == 2
    line = one_error_line(res)
    assert "--metric cosine" in line and "--metric ip" in line
    assert run(*base, "--metric", "ip", "--force").exit_code == 0


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_row_count_mismatch_is_refused_even_when_forced(made, force):
    res = run("search", made["queries"], "-g", made["short"], "-b", made["bias"], "-o", made["dir"] / "r.h5", *force)
    assert res.exit_code == 2
    line = one_error_line(res)
    assert "300 biases" in line and "299 rows" in line


def test_outputs_record_their_inputs(made):
    out = made["dir"] / "res.h5"
    assert run("search", made["queries"], "-g", made["gallery"], "-b", made["bias"], "-o", out, "-q").exit_code == 0
    bias_attrs = read_bias(made["bias"]).attrs
    gallery_fp = open_embeddings(made["gallery"]).fingerprint()
    assert bias_attrs["gallery_fingerprint"] == gallery_fp
    assert bias_attrs["reference_fingerprint"] == open_embeddings(made["reference"]).fingerprint()
    for key in ("alpha", "k", "metric", "nnn_version", "created", "n_gallery", "n_reference", "gallery_shape"):
        assert key in bias_attrs
    with h5py.File(out, "r") as f:
        attrs = dict(f.attrs)
    assert attrs["gallery_fingerprint"] == gallery_fp
    assert attrs["queries_fingerprint"] == open_embeddings(made["queries"]).fingerprint()
    assert attrs["bias_gallery_fingerprint"] == gallery_fp and attrs["bias_alpha"] == 0.75
    res = run("eval", "-Q", made["queries"], "-g", made["gallery"], "-t", made["truth"], "-b", made["bias"], "--json")
    prov = json.loads(res.stdout)["provenance"]
    assert prov["gallery"]["fingerprint"] == gallery_fp and prov["bias"]["bias_k"] == 8


# ---------------------------------------------------------------------------
# nnn info
# ---------------------------------------------------------------------------
def test_info_describes_every_kind_of_file(made):
    d = made["dir"]
    run("search", made["queries"], "-g", made["gallery"], "-b", made["bias"], "-o", d / "res.h5", "-q")
    run("search", made["queries"], "-g", made["gallery"], "-b", made["bias"], "-o", d / "res.npz", "-q")
    run(
        "search",
        made["queries"],
        "-g",
        made["gallery"],
        "-b",
        made["bias"],
        "-o",
        d / "res.jsonl",
        "--format",
        "jsonl",
        "-q",
    )
    (d / "params.json").write_text(json.dumps({"alpha": 0.5, "k": 4}))
    expect = {
        made["gallery"]: "embeddings",
        made["gallery_npy"]: "embeddings",
        made["bias"]: "bias",
        d / "res.h5": "search",
        d / "res.npz": "results",
        d / "res.jsonl": "results",
        d / "params.json": "params",
        made["truth"]: "truth",
    }
    for path, kind in expect.items():
        res = run("info", path, "--json")
        assert res.exit_code == 0, (path, res.output)
        desc = json.loads(res.stdout)
        assert desc["kind"] == kind, (path, desc)
        res = run("info", path)
        assert res.exit_code == 0 and kind in res.output
    desc = json.loads(run("info", made["bias"], "--json").stdout)
    assert desc["datasets"]["topk"]["shape"] == [300, 8]
    assert desc["attrs"]["history"][0]["op"] == "create"
    assert desc["attrs"]["gallery_parts"][0]["rows"] == 300
    desc = json.loads(run("info", made["gallery"], "--fingerprint", "--json").stdout)
    assert desc["fingerprint"] == read_bias(made["bias"]).attrs["gallery_fingerprint"]


@pytest.mark.parametrize(
    "name, content", [("missing.h5", None), ("bad.h5", b"not hdf5"), ("x.txt", b"hi"), ("bad.json", b"{")]
)
def test_info_bad_files_exit_2(tmp_path, name, content):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    res = run("info", tmp_path / name)
    assert res.exit_code == 2
    one_error_line(res)


# ---------------------------------------------------------------------------
# Refuse to overwrite an input, for every command that writes
# ---------------------------------------------------------------------------
def _commands(m):
    g, r, q, t, b = m["gallery"], m["reference"], m["queries"], m["truth"], m["bias"]
    bias = ["bias", g, "-r", r, "--alpha", 0.5, "--k", 4, "-q", "-o"]
    search = ["search", q, "-g", g, "-b", b, "-q", "-o"]
    tune = ["tune", "-Q", q, "-g", g, "-t", t, "-r", r, "--alphas", "0.5", "--ks", "2", "-q", "-o"]
    report = ["eval", "-Q", q, "-g", g, "-t", t, "-b", b, "-q", "--report"]
    return [(bias, g), (bias, r), (search, q), (search, g), (search, b), (tune, g), (tune, t), (report, q)]


def test_no_command_overwrites_an_input(made):
    for args, victim in _commands(made):
        before = Path(victim).read_bytes()
        res = run(*args, victim)
        assert res.exit_code == 2, (args, res.output)
        assert "input" in res.output, res.output
        assert Path(victim).read_bytes() == before


def test_links_to_an_input_are_refused_too(made):
    d = made["dir"]
    os.symlink(made["gallery"], d / "sym.h5")
    os.link(made["gallery"], d / "hard.h5")
    for alias in ("sym.h5", "hard.h5"):
        res = run("bias", made["gallery"], "-r", made["reference"], "--alpha", 0.5, "--k", 4, "-o", d / alias)
        assert res.exit_code == 2 and "input" in res.output


# ---------------------------------------------------------------------------
# atomic_output
# ---------------------------------------------------------------------------
def test_atomic_output_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_output_fsyncs_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    seen = []
    real_fsync = os.fsync

    def spy(fd):
        seen.append(target.read_bytes())  # the old content is still in place while syncing
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert seen and seen[0] == b"old"
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert (target.stat().st_mode & 0o777) == 0o644


def test_atomic_output_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        with atomic_output(tmp_path / "nope" / "x.h5"):
            pass


def test_bad_input_leaves_no_output_or_temp(made):
    d = made["dir"]
    before = set(os.listdir(d))
    res = run("bias", made["gallery"], "-r", made["reference"], "--alpha", 0.5, "--k", 100000, "-o", d / "new.h5")
    assert res.exit_code == 2
    assert set(os.listdir(d)) == before


# ---------------------------------------------------------------------------
# Concurrent writers: last complete writer wins, the file is always whole
# ---------------------------------------------------------------------------
def test_two_concurrent_writers_leave_one_complete_file(made):
    d = made["dir"]
    out = d / "shared.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                *NNN,
                "bias",
                str(made["gallery"]),
                "-r",
                str(made["reference"]),
                "--alpha",
                str(a),
                "--k",
                "8",
                "-o",
                str(out),
                "-q",
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        for a in (0.5, 1.0)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    got = read_bias(out)
    want = {a: read_bias(made["bias"]).bias / 0.75 * a for a in (0.5, 1.0)}
    assert any(np.allclose(got.bias, w, atol=1e-5) and got.attrs["alpha"] == a for a, w in want.items())
    assert not [p for p in os.listdir(d) if p.endswith(".tmp")]


# ---------------------------------------------------------------------------
# Determinism: same inputs and options, any thread count -> byte-identical arrays
# ---------------------------------------------------------------------------
_RUN_TWICE = """
import sys
from nnn_cli.cli.application import app
gallery, reference, queries, tag, threads = sys.argv[1:]
for rep in ("a", "b"):
    for args in (["bias", gallery, "-r", reference, "--alpha", "0.75", "--k", "8", "-o", f"{tag}{rep}.b.h5"],
                 ["search", queries, "-g", gallery, "-b", f"{tag}{rep}.b.h5", "-n", "20", "-o", f"{tag}{rep}.r.h5"]):
        try:
            app([*args, "--threads", threads, "-q"])
        except SystemExit as exc:
            assert not exc.code, exc.code
"""


def test_byte_identical_across_runs_and_thread_counts(made):
    d = made["dir"]
    arrays = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        tag = str(d / f"t{threads}")
        subprocess.run(
            [
                sys.executable,
                "-c",
                _RUN_TWICE,
                str(made["gallery"]),
                str(made["reference"]),
                str(made["queries"]),
                tag,
                threads,
            ],
            env=env,
            check=True,
            timeout=120,
        )
        for rep in ("a", "b"):
            with h5py.File(f"{tag}{rep}.b.h5") as fb, h5py.File(f"{tag}{rep}.r.h5") as fr:
                arrays.append(
                    [
                        fb["bias"][()].tobytes(),
                        fb["topk"][()].tobytes(),
                        fr["indices"][()].tobytes(),
                        fr["scores"][()].tobytes(),
                    ]
                )
    assert all(a == arrays[0] for a in arrays[1:])


# ---------------------------------------------------------------------------
# Queries from standard input
# ---------------------------------------------------------------------------
def test_queries_from_stdin_npy(made, hub_data):
    import io

    buf = io.BytesIO()
    np.save(buf, hub_data.queries[:5])
    res = run("search", "-", "-g", made["gallery"], "-b", made["bias"], "-n", 3, "-o", "-", input=buf.getvalue())
    assert res.exit_code == 0, res.output
    from_stdin = [json.loads(line) for line in res.stdout.splitlines()]
    np.save(made["dir"] / "q5.npy", hub_data.queries[:5])
    res = run("search", made["dir"] / "q5.npy", "-g", made["gallery"], "-b", made["bias"], "-n", 3, "-o", "-")
    assert from_stdin == [json.loads(line) for line in res.stdout.splitlines()]
    assert len(from_stdin) == 5


@pytest.mark.parametrize("payload, message", [(b"", "no data"), (b"garbage", "not .npy")])
def test_bad_stdin_exits_2(made, payload, message):
    res = run("search", "-", "-g", made["gallery"], "-o", "-", input=payload)
    assert res.exit_code == 2 and message in one_error_line(res)
