"""`--engine ray` keeps the CLI's manners, tried through the CLI as a subprocess on a real local Ray (loopback only).

* an exception raised inside a task: one stderr line, the task's own message, no ANSI (exit 2 for an nnn error,
  1 for any other exception, naming it);
* ``-q``: nothing on stderr on success, Ray's banners included ("Token authentication ...");
* SIGTERM / SIGINT to the driver: exit 143 / 130 with the one line, the private cluster torn down;
* ``kill -9`` of the driver: no process of its private cluster (holder, GCS, raylet, agents, workers) survives;
* a bad or unreachable ``--address``: exit 2, one line naming it, within ``--io-timeout``.

Tasks are made slow or failing by wrapping ``ray.remote`` in the driver (:data:`DRIVER`): the CLI runs unchanged,
only the functions it submits sleep or raise inside the Ray workers.  The module's shared cluster
(tests/ray/ray_cluster.py, owned and stopped by PID) serves the error tests through ``--address``; the signal and
ownership tests need the CLI's own private cluster, one each.  Never ``ray stop``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

sys.path.insert(0, str(Path(__file__).parent))
from ray_cluster import LOOPBACK_ENV, LocalRayCluster, listening_sockets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[")
DRIVER = r"""
import functools, os, sys, time
import ray

MODE = os.environ.get("NNN_TEST_TASK_MODE", "slow")
MARK = os.environ.get("NNN_TEST_TASK_MARK", "")
real_remote = ray.remote


def wrap(fn):
    @functools.wraps(fn)
    def task(*args, **kwargs):
        if MODE == "nnn":
            from nnn_cli.errors import InputError

            raise InputError("gallery.npy: row 7 holds NaN")
        if MODE == "other":
            raise ValueError("boom\nand a second line")
        if MARK:
            open(f"{MARK}.{os.getpid()}", "w").close()
        time.sleep(600)
        return fn(*args, **kwargs)

    return task


def remote(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return real_remote(wrap(args[0]))
    return real_remote(*args, **kwargs)


ray.remote = remote
sys.argv = ["nnn", *sys.argv[1:]]
from nnn_cli.cli import main

main()
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("manners")
    rng = np.random.default_rng(0)
    np.save(root / "g.npy", rng.standard_normal((600, 16)).astype(np.float32))
    np.save(root / "r.npy", rng.standard_normal((900, 16)).astype(np.float32))
    return root


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "NNN_"))}
    env.update(LOOPBACK_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _bias_args(inputs: Path, out: Path, *more: str) -> list[str]:
    g, r = str(inputs / "g.npy"), str(inputs / "r.npy")
    return ["bias", g, "--reference", r, "--alpha", "0.5", "--k", "4", "--engine", "ray", "-o", str(out), *more]


def _nnn(args: list[str], env: dict, timeout: float = 240, driver: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", DRIVER, *args] if driver else [sys.executable, "-m", "nnn_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _reset_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ---------------------------------------------------------------- a shared cluster for the error tests
@pytest.fixture(scope="module")
def shared():
    auth = tempfile.mkdtemp(prefix="nnn-ray-auth-")
    token = os.path.join(auth, "token")
    with open(token, "w") as fh:
        fh.write(secrets.token_hex(32))
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token}
    cluster = LocalRayCluster(num_cpus=2, env={**LOOPBACK_ENV, **env}).start()
    try:
        yield cluster, env
    finally:
        cluster.stop()
        shutil.rmtree(auth, ignore_errors=True)


@pytest.mark.parametrize(
    "mode,code,line",
    [
        ("nnn", 2, "Error: gallery.npy: row 7 holds NaN"),
        ("other", 1, "Error: unexpected ValueError: boom (set NNN_DEBUG=1 for the traceback)"),
    ],
)
def test_error_in_a_task_is_one_line(shared, inputs, tmp_path, mode, code, line):
    cluster, auth = shared
    env = _env(NNN_TEST_TASK_MODE=mode, **auth)
    res = _nnn(_bias_args(inputs, tmp_path / "out", "--address", cluster.address), env, driver=True)
    assert res.returncode == code, res.stderr
    assert _lines(res.stderr) == [line]
    assert not ANSI.search(res.stderr + res.stdout)


def test_bad_rows_found_after_blocks_were_written_is_one_line_and_leaves_nothing(shared, tmp_path):
    """A task of the last block finds NaN after writing began (six blocks, at most five in flight on the two
    CPUs: the sixth is submitted only once a block was written): the task's own one line (exit 2, no ANSI), and
    the run folder is aborted (no manifest, no block file)."""
    cluster, auth = shared
    rng = np.random.default_rng(1)
    g = rng.standard_normal((6 * 1024, 16)).astype(np.float32)
    g[5500, 3] = np.nan
    np.save(tmp_path / "g.npy", g)
    np.save(tmp_path / "r.npy", rng.standard_normal((900, 16)).astype(np.float32))
    out = tmp_path / "out"
    res = _nnn([*_bias_args(tmp_path, out, "--address", cluster.address, "--block-rows", "1024")], _env(**auth))
    assert res.returncode == 2, res.stderr
    lines = _lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "5500" in lines[0], res.stderr
    assert not ANSI.search(res.stderr + res.stdout)
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.npy"))


# ---------------------------------------------------------------- private clusters: quiet, signals, kill -9
def _cluster_processes(pid: int) -> dict[int, tuple[float, str]]:
    """pid -> (create time, name) of every descendant of ``pid``."""
    out = {}
    try:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                out[p.pid] = (p.create_time(), p.name())
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return out


def _alive(procs: dict[int, tuple[float, str]]) -> list[str]:
    left = []
    for pid, (created, name) in procs.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{name}({pid})")
        except psutil.NoSuchProcess:
            pass
    return left


def _kill_all(procs: dict[int, tuple[float, str]]) -> None:
    """Only the processes this test saw start, by PID (never `ray stop`)."""
    for pid, (created, _) in procs.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:
                p.kill()
        except psutil.NoSuchProcess:
            pass


class SlowRun:
    """The CLI on a private cluster with tasks that sleep: started, then waited for until a task runs."""

    def __init__(self, inputs: Path, tmp: Path):
        self.mark = tmp / "task-started"
        env = _env(NNN_TEST_TASK_MODE="slow", NNN_TEST_TASK_MARK=str(self.mark))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, *_bias_args(inputs, tmp / "out")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
            preexec_fn=_reset_sigint,  # a background job may inherit SIGINT ignored (nnn then keeps it ignored)
        )
        self.seen: dict[int, tuple[float, str]] = {}

    def wait_for_task(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.seen.update(_cluster_processes(self.proc.pid))
            if list(self.mark.parent.glob(self.mark.name + ".*")):
                time.sleep(0.5)  # every process of the cluster is up once a task runs
                self.seen.update(_cluster_processes(self.proc.pid))
                names = {name for _, name in self.seen.values()}
                assert {"raylet", "gcs_server"} <= names, names
                return
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.2)
        raise AssertionError("no task started")

    def wait_for_start_up(self, timeout: float = 240) -> None:
        """Until the cluster's GCS runs: the holder is still inside ``ray.init`` (raylet starting)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.seen.update(_cluster_processes(self.proc.pid))
            if "gcs_server" in {name for _, name in self.seen.values()}:
                return
            assert self.proc.poll() is None, self.proc.communicate()
            time.sleep(0.05)
        raise AssertionError("no GCS started")

    def holder_sessions(self) -> set[int]:
        """Session ids of the driver's children other than its own (the private cluster's holder)."""
        mine = _sid(self.proc.pid) if self.proc.poll() is None else None
        return {s for pid in self.seen if (s := _sid(pid)) is not None and s != mine and s == pid}

    def wait_until_gone(self, timeout: float, sessions: set[int] = frozenset()) -> list[str]:
        """What is still alive after ``timeout`` s: processes seen, and any process of the ``sessions``."""

        def left():
            stray = [
                f"{p.info['name']}({p.pid}, session {_sid(p.pid)})"
                for p in psutil.process_iter(["name", "status"])
                if p.info["status"] != psutil.STATUS_ZOMBIE and _sid(p.pid) in sessions
            ]
            return _alive(self.seen) + stray

        deadline = time.time() + timeout
        while time.time() < deadline and left():
            time.sleep(0.2)
        return left()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        _kill_all(self.seen)


@pytest.fixture
def slow_run(inputs, tmp_path):
    run = SlowRun(inputs, tmp_path)
    try:
        yield run
    finally:
        run.close()


@pytest.mark.parametrize("quiet", [True, False])
def test_private_cluster_prints_only_our_lines(inputs, tmp_path, quiet):
    """Ray's own lines (the token-authentication banner among them) never reach stderr: with -q nothing does,
    without it only nnn's summary line."""
    res = _nnn([*_bias_args(inputs, tmp_path / "out"), *(["-q"] if quiet else [])], _env())
    assert res.returncode == 0, res.stderr
    if quiet:
        assert res.stderr == ""
    else:
        lines = _lines(res.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"wrote {tmp_path / 'out'}: "), res.stderr
    assert (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "Terminated"), (signal.SIGINT, 130, "Interrupted")])
def test_signal_to_driver_exits_with_one_line_and_tears_down(slow_run, sig, code, word):
    slow_run.wait_for_task()
    sessions = slow_run.holder_sessions()
    slow_run.proc.send_signal(sig)
    _, err = slow_run.proc.communicate(timeout=60)
    assert slow_run.proc.returncode == code, err
    lines = _lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"{word}; "), err
    assert not ANSI.search(err)
    assert slow_run.wait_until_gone(10, sessions) == []  # torn down before the driver exited (10 s of slack for psutil)


def test_kill_9_of_the_driver_leaves_no_cluster_process(slow_run):
    slow_run.wait_for_task()
    sessions = slow_run.holder_sessions()
    assert len(sessions) == 1, sessions  # the cluster runs in a session of its own, apart from the driver's
    sockets = listening_sockets(set(slow_run.seen))
    assert sockets and {ip for _, ip, _ in sockets} <= {"127.0.0.1"}, sockets  # loopback only
    os.kill(slow_run.proc.pid, signal.SIGKILL)
    slow_run.proc.wait(10)
    left = slow_run.wait_until_gone(30, sessions)
    assert left == [], f"still alive 30 s after kill -9 of the driver: {left}"


def test_kill_9_of_the_driver_during_start_up_leaves_no_cluster_process(slow_run):
    slow_run.wait_for_start_up()
    sessions = slow_run.holder_sessions()
    assert len(sessions) == 1, sessions
    os.kill(slow_run.proc.pid, signal.SIGKILL)
    slow_run.proc.wait(10)
    left = slow_run.wait_until_gone(30, sessions)
    assert left == [], f"still alive 30 s after kill -9 of the driver: {left}"


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


# ---------------------------------------------------------------- --address
def _silent_server() -> tuple[socket.socket, int, threading.Event]:
    """A TCP server on 127.0.0.1 that accepts and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()
    conns = []

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass
        for c in conns:
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1], stop


@pytest.mark.parametrize("kind", ["refused", "scheme", "garbage", "no-port", "silent"])
def test_bad_address_is_one_line_within_io_timeout(inputs, tmp_path, kind):
    srv = stop = None
    if kind == "silent":
        srv, port, stop = _silent_server()
        address = f"127.0.0.1:{port}"
    else:
        address = {"refused": "127.0.0.1:1", "scheme": "foo://x", "garbage": "!!garbage!!", "no-port": "localhost"}[
            kind
        ]
    try:
        t0 = time.monotonic()
        res = _nnn([*_bias_args(inputs, tmp_path / "out"), "--address", address, "--io-timeout", "3"], _env(), 120)
        took = time.monotonic() - t0
    finally:
        if srv is not None:
            stop.set()
            srv.close()
    assert res.returncode == 2, res.stderr
    lines = _lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"Error: --address {address}"), res.stderr
    assert took < 30, took  # the default --io-timeout is 30 s; Ray alone retries for minutes
    assert not (tmp_path / "out").exists()  # nothing written before the cluster answered


def test_io_timeout_from_the_environment(inputs, tmp_path):
    srv, port, stop = _silent_server()
    try:
        res = _nnn(
            [*_bias_args(inputs, tmp_path / "out"), "--address", f"127.0.0.1:{port}"], _env(NNN_IO_TIMEOUT="1.5"), 120
        )
    finally:
        stop.set()
        srv.close()
    assert res.returncode == 2
    assert "within 1.5s" in res.stderr, res.stderr


# ---------------------------------------------------------------- the address check, without a cluster
@pytest.mark.parametrize(
    "address,want",
    [
        ("127.0.0.1:6379", ("", "127.0.0.1", 6379)),
        ("head-node.cluster.local:6379", ("", "head-node.cluster.local", 6379)),
        ("ray://10.0.0.5:10001", ("ray", "10.0.0.5", 10001)),
        ("[::1]:6379", ("", "::1", 6379)),
    ],
)
def test_address_forms(address, want):
    from nnn_cli.scale.ray.cluster import parse_address

    assert parse_address(address) == want


@pytest.mark.parametrize("address", ["foo://x:1", "http://h:80", "h", "h:", ":80", "h:0", "h:70000", "a b:1", "h:8x"])
def test_bad_address_forms(address):
    from nnn_cli.errors import ParameterError
    from nnn_cli.scale.ray.cluster import parse_address

    with pytest.raises(ParameterError, match=f"^--address {re.escape(address)}: "):
        parse_address(address)


def test_an_http_server_is_not_a_cluster():
    """A real server that answers, but not as gRPC does (HTTP/1.1): refused at once, naming the address."""
    import http.server

    from nnn_cli.errors import ParameterError
    from nnn_cli.scale.ray.cluster import check_address

    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        address = f"127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(ParameterError, match=f"^--address {address}: not a Ray cluster"):
            check_address(address, 5)
    finally:
        srv.shutdown()
        srv.server_close()


def test_one_line_drops_colours_and_later_lines():
    from nnn_cli.scale.ray.cluster import one_line

    assert one_line("\x1b[31mray::task()\x1b[39m failed\n  File x\nValueError: y") == "ray::task() failed"
    assert one_line("") == "" and len(one_line("x" * 1000)) == 500
