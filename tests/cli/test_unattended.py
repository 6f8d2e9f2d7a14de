"""Issue 12: determinism by construction, no lost update, truthful exits, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from nnn_cli.core import topk as T
from nnn_cli.errors import BusyError, InputError, OutputError, ParameterError


def _rand(n, d, seed):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# ---------------------------------------------------------------- determinism (one process)
def test_running_top_scores_identical_for_any_blocks_and_workers():
    q, db = _rand(2500, 24, 0), _rand(20000, 24, 1)
    ref = None
    for workers, block in ((1, 20000), (2, 8192), (3, 5000), (2, 777)):
        run = T.RunningTopScores(q, 17, workers)
        for s in range(0, len(db), block):
            run.add(db[s : s + block])
        out = run.result()
        ref = out if ref is None else ref
        assert out.tobytes() == ref.tobytes()


def test_gemm_search_identical_for_any_threads_and_block_rows():
    q, db = _rand(2100, 16, 2), _rand(17000, 16, 3)
    db[9000] = db[5]  # exact duplicate rows in different database tiles
    outs = []
    for workers, block in ((1, 8192), (2, 1000), (4, 3000)):
        T.set_workers(workers)
        try:
            outs.append(T.search_blocks(T.GemmIndex(db), q, 12, block))
        finally:
            T.set_workers(None)
    for s, i in outs[1:]:
        assert s.tobytes() == outs[0][0].tobytes() and i.tobytes() == outs[0][1].tobytes()


def _check_ref_knn_with_draws(d_ref, i_ref, d_new, i_new, rtol=1e-5):
    """Tie-aware comparison (as faiss contrib/evaluation.check_ref_knn_with_draws): scores agree to
    ``rtol``, and ids agree except within runs of scores closer than the tolerance."""
    np.testing.assert_allclose(d_ref, d_new, rtol=rtol, atol=rtol)
    for row in range(len(d_ref)):
        dr, ir, jr = d_ref[row], i_ref[row], i_new[row]
        close = np.r_[False, np.abs(np.diff(dr)) <= rtol * (1 + np.abs(dr[1:]))]
        start = 0
        for j in range(1, len(dr) + 1):
            if j == len(dr) or not close[j]:
                if j - start == 1 or j == len(dr):
                    # a run that reaches the end may hold different items beyond the cut
                    if j - start == 1:
                        assert ir[start] == jr[start], (row, start)
                else:
                    assert set(ir[start:j]) == set(jr[start:j]), (row, start)
                start = j


_KERNEL_RUN = """
import sys, numpy as np
from nnn_cli.core.topk import GemmIndex, search_blocks
from nnn_cli.core.nnn import reference_topk
rng = np.random.default_rng(7)
q = rng.standard_normal((1500, 40)).astype(np.float32); g = rng.standard_normal((9000, 40)).astype(np.float32)
g[8500] = g[3]
s, i = search_blocks(GemmIndex(g), q, 20)
t = reference_topk(g[:2000], q, 8)
np.savez(sys.argv[1], s=s, i=i, t=t)
"""


def test_rankings_agree_across_blas_kernels(tmp_path):
    """Other kernels round differently: compare tie-aware, never bit for bit."""
    results = {}
    for kernel in ("", "Sandybridge", "Haswell"):
        env = {**os.environ, "OPENBLAS_CORETYPE": kernel} if kernel else dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None) if not kernel else None
        out = tmp_path / f"k{kernel or 'default'}.npz"
        subprocess.run([sys.executable, "-c", _KERNEL_RUN, str(out)], env=env, check=True, timeout=120)
        results[kernel] = np.load(out)
    base = results[""]
    for kernel, r in results.items():
        _check_ref_knn_with_draws(base["s"], base["i"], r["s"], r["i"])
        np.testing.assert_allclose(base["t"], r["t"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- locks
def _bias_file(path, n=4, k=2):
    from nnn_cli.data.biasfile import write_bias

    write_bias(
        path,
        np.zeros(n, np.float32),
        {"alpha": 0.5, "k": k, "metric": "cosine", "nnn_kind": "bias"},
        extra={"topk": np.zeros((n, k), np.float32)},
    )


def test_concurrent_updates_keep_both(tmp_path):
    from nnn_cli.data.biasfile import update_bias_file

    path = tmp_path / "b.h5"
    _bias_file(path)

    def grow(stored):
        time.sleep(0.3)
        b = np.r_[stored.bias, [len(stored.bias)]].astype(np.float32)
        return b, np.vstack([stored.topk, np.zeros((1, stored.k), np.float32)]), None, dict(stored.attrs)

    threads = [threading.Thread(target=update_bias_file, args=(path, grow)) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    with h5py.File(path) as f:
        assert len(f["bias"]) == 6  # neither update lost


def test_second_writer_gives_up_naming_the_holder(tmp_path):
    from nnn_cli.data.biasfile import locked_bias_update

    path = tmp_path / "b.h5"
    _bias_file(path)
    with locked_bias_update(path):
        with pytest.raises(BusyError, match=f"pid {os.getpid()}"):
            with locked_bias_update(path, wait=0.2):
                pass
    with locked_bias_update(path, wait=0.2) as stored:  # released afterwards
        assert len(stored.bias) == 4


def test_concurrent_embed_partial_is_locked(tmp_path):
    from nnn_cli.embed.store import PartialStore, partial_path

    out = tmp_path / "o.h5"
    first = PartialStore.open(out, {"k": 1})
    first.append(np.ones((2, 3), np.float32), ["a", "b"], [], 2)
    with pytest.raises(BusyError):
        PartialStore.open(out, {"k": 2}, restart=True, wait=0.2)
    assert partial_path(out).exists() and first.rows == 2  # not deleted by the second run
    first.close()
    again = PartialStore.open(out, {"k": 1}, wait=0.2)
    assert again.resumed and again.rows == 2
    again.close()


# ---------------------------------------------------------------- outputs and signals
def test_disk_full_is_one_line(tmp_path):
    import errno

    from nnn_cli.data.outputs import atomic_output

    out = tmp_path / "x.h5"
    with pytest.raises(OutputError, match=f"^disk full writing {out}$"):
        with atomic_output(out):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not out.exists() and not list(tmp_path.iterdir())


_SIGNAL_AFTER_RENAME = """
import os, signal, sys
from nnn_cli.data import outputs
from nnn_cli.signals import install_handlers, published_outputs
install_handlers()
real = os.replace
def replace_then_signal(a, b):
    real(a, b)
    os.kill(os.getpid(), signal.SIGTERM)  # held back until the rename is recorded
outputs.os.replace = replace_then_signal
try:
    with outputs.atomic_output(sys.argv[1]) as tmp:
        open(tmp, "w").write("new")
except KeyboardInterrupt as exc:
    print(type(exc).__name__, getattr(exc, "nnn_published", None), published_outputs())
"""


def test_signal_after_rename_reports_publication(tmp_path):
    out = tmp_path / "o.txt"
    r = subprocess.run(
        [sys.executable, "-c", _SIGNAL_AFTER_RENAME, str(out)], capture_output=True, text=True, timeout=60
    )
    assert r.stdout.split()[:2] == ["Terminated", str(out)], r.stdout + r.stderr
    assert out.read_text() == "new"


# ---------------------------------------------------------------- bad inputs
def test_params_must_be_integers(tmp_path):
    from nnn_cli.data.tables import read_params

    p = tmp_path / "p.json"
    p.write_text(json.dumps({"alpha": 0.5, "k": 16.9}))
    with pytest.raises(InputError, match=f"{p}.*'k' must be a positive integer"):
        read_params(p)
    p.write_text(json.dumps({"alpha": 0.5, "k": 16.0}))
    assert read_params(p)["k"] == 16


def test_truth_csv_duplicate_ids_and_encoding(tmp_path):
    from nnn_cli.data.tables import read_truth

    t = tmp_path / "t.csv"
    t.write_text("query,gallery\na,x\n")
    with pytest.raises(InputError, match="appears twice"):
        read_truth(t, 2, 2, np.array(["a", "b"]), np.array(["x", "x"]))
    t.write_bytes(b"query,gallery\n\xff\xfe,x\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_truth(t, 2, 2, np.array(["a", "b"]), np.array(["x", "y"]))


def test_norm_overflow_normalised_or_refused(tmp_path):
    from nnn_cli.core.nnn import compute_bias
    from nnn_cli.data.inputs import open_embeddings

    x = np.array([[3e30, 4e30], [1.0, 0.0]], np.float32)  # finite, but |x|^2 overflows float32
    np.save(tmp_path / "x.npy", x)
    src = open_embeddings(str(tmp_path / "x.npy"))
    np.testing.assert_allclose(src.read("cosine"), [[0.6, 0.8], [1, 0]], rtol=1e-6)
    raw = src.read("ip")  # kept as is; the scores overflow, and the bias refuses them
    with pytest.raises(ParameterError, match="overflow float32"):
        compute_bias(raw, raw, 0.5, 1)


def test_damaged_bias_files_refused(tmp_path):
    from nnn_cli.data.biasfile import load_stored_bias

    path = tmp_path / "b.h5"
    _bias_file(path)
    with h5py.File(path, "r+") as f:
        f["topk"][0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_stored_bias(path)
    _bias_file(path)
    with h5py.File(path, "r+") as f:
        f.attrs["alpha"] = "lots"
    with pytest.raises(InputError, match="alpha"):
        load_stored_bias(path)


# ---------------------------------------------------------------- each bad input: exit 2, one line (CLI)
def _nnn(*args, stdin=None, preexec=None):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    return subprocess.run(
        [sys.executable, "-m", "nnn_cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=300,
        preexec_fn=preexec,
    )


def _one_line(proc, *words):
    err = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("warning:", "index:", "note:"))]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def small_files(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "g.npy", rng.standard_normal((500, 16)).astype(np.float32))
    np.save(tmp_path / "r.npy", rng.standard_normal((300, 16)).astype(np.float32))
    return tmp_path


def test_soft_link_loop_and_truncated_stdin_h5(small_files):
    t = small_files
    g = np.load(t / "g.npy")
    with h5py.File(t / "loop.h5", "w") as f:
        f["embeddings"] = h5py.SoftLink("/x")
        f["x"] = h5py.SoftLink("/embeddings")
    proc = _nnn("bias", t / "loop.h5", "--reference", t / "r.npy", "--alpha", "0.5", "--k", "4", "-o", t / "o.h5")
    _one_line(proc, "loop.h5", "soft link loop")
    with h5py.File(t / "whole.h5", "w") as f:
        f["embeddings"] = g
        f["ids"] = np.array([str(i) for i in range(len(g))], dtype=object)
    data = (t / "whole.h5").read_bytes()
    for cut in (3000, len(data) // 2):
        proc = _nnn(
            "bias", "-", "--reference", t / "r.npy", "--alpha", "0.5", "--k", "4", "-o", t / "o.h5", stdin=data[:cut]
        )
        _one_line(proc, "<stdin>", "truncated or damaged HDF5")
    assert not (t / "o.h5").exists()


def test_faiss_factory_that_fails_in_training(small_files):
    t = small_files
    proc = _nnn(
        "bias",
        t / "g.npy",
        "--reference",
        t / "r.npy",
        "--alpha",
        "0.5",
        "--k",
        "4",
        "--index",
        "IVF1024,Flat",
        "-o",
        t / "o.h5",
    )
    _one_line(proc, "--index 'IVF1024,Flat'", "300 rows")
    assert not (t / "o.h5").exists()


def test_output_on_a_read_only_filesystem(small_files):
    t = small_files
    mnt = t / "ro"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root (as non-root: chmod a-w on a folder does the same)")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = _nnn("bias", t / "g.npy", "--reference", t / "r.npy", "--alpha", "0.5", "--k", "4", "-o", mnt / "b.h5")
        _one_line(proc, str(mnt / "b.h5"), "read-only")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_shards_opened_lazily_beyond_ulimit(tmp_path):
    import resource

    rng = np.random.default_rng(1)
    (tmp_path / "emb").mkdir()
    parts = [rng.standard_normal((7, 8)).astype(np.float32) for _ in range(300)]
    for i, p in enumerate(parts):
        np.save(tmp_path / "emb" / f"{i}.npy", p)
    np.save(tmp_path / "r.npy", rng.standard_normal((50, 8)).astype(np.float32))

    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    proc = _nnn(
        "bias",
        tmp_path / "emb",
        "--reference",
        tmp_path / "r.npy",
        "--alpha",
        "0.5",
        "--k",
        "4",
        "-o",
        tmp_path / "b.npy",
        preexec=low_nofile,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    from nnn_cli.core.nnn import compute_bias
    from nnn_cli.data.inputs import open_embeddings

    g = open_embeddings(str(tmp_path / "emb")).read("cosine")
    r = open_embeddings(str(tmp_path / "r.npy")).read("cosine")
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), compute_bias(g, r, 0.5, 4))
