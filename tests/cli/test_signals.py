"""Interrupted runs keep the previous output; pipes end quietly.

Real subprocesses: `nnn bias` is killed with SIGINT, SIGTERM and SIGKILL while
it is writing its temporary output, and `nnn search -o - | head -1` is cut
short by the pipe closing.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli.application import app

NNN = [sys.executable, "-m", "nnn_cli"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Inputs whose bias output (dataset topk, 40k x 256 float32 = 40 MB) takes a while to write."""
    d = tmp_path_factory.mktemp("signals")
    rng = np.random.default_rng(0)
    np.save(d / "gallery.npy", rng.standard_normal((40_000, 8)).astype(np.float32))
    np.save(d / "reference.npy", rng.standard_normal((300, 8)).astype(np.float32))
    return d


def _temps(folder, name):
    return sorted(p for p in os.listdir(folder) if p.startswith(f".{name}.") and p.endswith(".tmp"))


def _reset_sigint():
    # a background job may inherit SIGINT ignored; give the child Python's usual Ctrl-C handling
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_signal_while_writing_keeps_the_previous_output(big, tmp_path, sig, code):
    out = tmp_path / "bias.h5"
    old = CliRunner().invoke(
        app,
        [
            "bias",
            str(big / "gallery.npy"),
            "-r",
            str(big / "reference.npy"),
            "--alpha",
            "1",
            "--k",
            "1",
            "-o",
            str(out),
            "-q",
        ],
    )
    assert old.exit_code == 0, old.output
    before = out.read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            *NNN,
            "bias",
            str(big / "gallery.npy"),
            "-r",
            str(big / "reference.npy"),
            "--alpha",
            "0.5",
            "--k",
            "256",
            "-o",
            str(out),
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=_reset_sigint,
    )
    deadline = time.monotonic() + 90
    while not _temps(tmp_path, out.name):  # wait until the temporary output exists: it is being written
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.001)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == code, err
    assert out.read_bytes() == before  # the previous output survived, byte for byte
    if sig == signal.SIGKILL:
        # kill -9 cannot be caught: a stale `.bias.h5.XXXX.tmp` may stay behind (documented), never a bad output
        assert all(name.startswith(".bias.h5.") for name in _temps(tmp_path, out.name))
    else:
        assert _temps(tmp_path, out.name) == []
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and ("Interrupted" if sig == signal.SIGINT else "Terminated") in lines[0]


@pytest.fixture(scope="module")
def search_inputs(tmp_path_factory, hub_data):
    d = tmp_path_factory.mktemp("pipe")
    np.save(d / "gallery.npy", hub_data.gallery)
    # 3000 queries x 50 results is about 7 MB of JSON lines: far more than a pipe buffer holds
    np.save(d / "queries.npy", np.tile(hub_data.queries, (5, 1)))
    return d


def _pipeline(command: str, cwd):
    env = {**os.environ, "NNN": " ".join(NNN)}
    return subprocess.run(
        ["bash", "-c", f'set -o pipefail; {command}; echo "status=${{PIPESTATUS[*]}}" >&2'],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=120,
    )


def test_head_closing_the_pipe_ends_search_quietly(search_inputs):
    res = _pipeline(
        "$NNN search queries.npy -g gallery.npy -n 50 -o - --format jsonl 2>nnn_err.txt | head -1", search_inputs
    )
    lines = res.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith('{"query": 0')
    assert (search_inputs / "nnn_err.txt").read_text() == ""  # no traceback, no progress bar, nothing
    assert "status=0 0" in res.stderr.decode()


def test_queries_from_a_pipe(search_inputs):
    res = _pipeline("cat queries.npy | $NNN search - -g gallery.npy -n 5 -o - 2>nnn_err.txt | wc -l", search_inputs)
    assert res.stdout.decode().strip() == "3000"
    assert (search_inputs / "nnn_err.txt").read_text() == ""
    res = _pipeline("cat queries.npy | $NNN search - -g gallery.npy -n 5 -o - 2>nnn_err.txt | head -2", search_inputs)
    assert len(res.stdout.decode().splitlines()) == 2
    assert (search_inputs / "nnn_err.txt").read_text() == ""
