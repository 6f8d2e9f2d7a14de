"""Lock files cannot be turned into a weapon: ``.NAME.lock`` is opened with O_NOFOLLOW and without O_TRUNC, and
anything but a regular file of ours with one link is refused with one line (exit 2), left as it was, and so is
what it points to.  (Waiting for and naming the holder: tests/cli/test_unattended.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnn_cli.data.locks import exclusive_lock, lock_path
from nnn_cli.errors import OutputError

REPO = Path(__file__).resolve().parents[2]
SECRET = b"precious bytes that must survive\n" * 100


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def test_lock_file_is_created_and_reused(tmp_path):
    target = tmp_path / "b.h5"
    with exclusive_lock(target, wait=0) as path:
        assert path == lock_path(target) and path.is_file() and not path.is_symlink()
        assert f"pid {os.getpid()}" in path.read_text()
    with exclusive_lock(target, wait=0):  # the file we created is ours: reused
        pass


def test_planted_symlink_is_refused_and_its_target_kept(tmp_path, victim):
    target = tmp_path / "b.h5"
    lock_path(target).symlink_to(victim)
    before = os.stat(victim)
    with pytest.raises(OutputError, match=r"is a symbolic link; refusing") as err:
        with exclusive_lock(target, wait=0):
            pytest.fail("locked through a symlink")
    assert "\n" not in str(err.value) and str(lock_path(target)) in str(err.value)
    assert victim.read_bytes() == SECRET
    assert os.stat(victim).st_mtime_ns == before.st_mtime_ns
    assert lock_path(target).is_symlink()  # left as it was


def test_dangling_symlink_creates_nothing(tmp_path):
    target = tmp_path / "b.h5"
    aim = tmp_path / "created-by-the-attacker's-wish"
    lock_path(target).symlink_to(aim)
    with pytest.raises(OutputError, match="symbolic link"):
        with exclusive_lock(target, wait=0):
            pass
    assert not aim.exists()


def test_hard_link_is_refused_and_its_target_kept(tmp_path, victim):
    target = tmp_path / "b.h5"
    os.link(victim, lock_path(target))
    with pytest.raises(OutputError, match="hard links"):
        with exclusive_lock(target, wait=0):
            pass
    assert victim.read_bytes() == SECRET


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_fifo_or_folder_at_the_lock_path_is_refused(tmp_path, kind):
    target = tmp_path / "b.h5"
    path = lock_path(target)
    if kind == "fifo":
        os.mkfifo(path)
        want = "is not a regular file"
    else:
        path.mkdir()
        (path / "inside").write_bytes(b"x")
        want = "is a folder"
    with pytest.raises(OutputError, match=want):
        with exclusive_lock(target, wait=0):
            pass
    assert path.is_fifo() if kind == "fifo" else (path / "inside").read_bytes() == b"x"


def test_cli_append_refuses_a_symlinked_lock(tmp_path, victim):
    """Through the CLI: exit 2, one line naming the lock file, the bias file and the symlink's target intact."""
    rng = np.random.default_rng(0)
    g, r = tmp_path / "g.npy", tmp_path / "r.npy"
    np.save(g, rng.standard_normal((40, 8)).astype(np.float32))
    np.save(r, rng.standard_normal((60, 8)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    out = tmp_path / "bias.h5"

    def nnn(*args):
        return subprocess.run([sys.executable, "-m", "nnn_cli", *args], capture_output=True, text=True, env=env)

    made = nnn("bias", str(g), "--reference", str(r), "--alpha", "0.5", "--k", "4", "-o", str(out), "-q")
    assert made.returncode == 0, made.stderr
    before = out.read_bytes()
    lock_path(out).unlink(missing_ok=True)
    lock_path(out).symlink_to(victim)
    res = nnn("bias", str(g), "--reference", str(r), "--append-to", str(out), "--wait", "0")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "symbolic link" in lines[0], res.stderr
    assert victim.read_bytes() == SECRET
    assert out.read_bytes() == before
