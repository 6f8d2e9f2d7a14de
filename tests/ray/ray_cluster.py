"""A private local Ray cluster for tests, bound to 127.0.0.1, owned and stopped by PID.

``LocalRayCluster().start()`` runs this file as a holder process in its own session: it calls
``ray.init(num_cpus=..., num_gpus=..., _node_ip_address="127.0.0.1", include_dashboard=False)``
(which starts GCS, raylet and workers as its descendants), prints the GCS address and waits.
``stop()`` sends SIGTERM to the holder (it calls ``ray.shutdown()``), then SIGKILLs any descendant
still alive, by PID.  It never runs ``ray stop``, which would kill every Ray process on the machine.

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` plus ``_node_ip_address="127.0.0.1"`` keep GCS, raylet,
workers and the runtime-env agent on loopback (checked by ``listening_sockets``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


class LocalRayCluster:
    def __init__(self, num_cpus: int = 2, num_gpus: int = 0, env: dict | None = None):
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self.tmp = tempfile.mkdtemp(prefix="nnn-ray-")
        self._known: dict[int, float] = {}  # pid -> create_time of every descendant seen

    def start(self, timeout: float = 90) -> LocalRayCluster:
        env = {**os.environ, **LOOPBACK_ENV, **self.env}
        log = open(os.path.join(self.tmp, "holder.log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.num_cpus), str(self.num_gpus), os.path.join(self.tmp, "r")],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            start_new_session=True,
            text=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("ADDRESS "):
                self.address = line.split()[1]
                self.descendants()
                return self
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"local Ray cluster did not start; see {log.name}")

    def descendants(self):
        """psutil.Process objects of the holder and everything it started (remembered across calls)."""
        import psutil

        procs = []
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        for p in procs:
            try:
                self._known.setdefault(p.pid, p.create_time())
            except psutil.NoSuchProcess:
                pass
        return procs

    def stop(self, grace: float = 10) -> None:
        import psutil

        if self.proc is None:
            return
        self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        for pid, created in self._known.items():  # only processes this cluster started, by PID
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket and bound UDP socket held by ``pids``, from ``ss``
    (iproute2), or from psutil where ``ss`` is not installed."""
    import shutil

    out = []
    if shutil.which("ss") is None:
        import socket as _socket

        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.pid not in pids or not conn.laddr:
                continue
            if conn.type == _socket.SOCK_STREAM and conn.status != psutil.CONN_LISTEN:
                continue
            if conn.type == _socket.SOCK_DGRAM and conn.raddr:
                continue
            out.append((conn.pid, conn.laddr.ip.removeprefix("::ffff:"), conn.laddr.port))
        return out
    for args in (["ss", "-ltnpH"], ["ss", "-lunpH"]):
        text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 5 or "pid=" not in line:
                continue
            local = fields[3]
            ip, port = local.rsplit(":", 1)
            ip = ip.strip("[]").removeprefix("::ffff:")
            for chunk in line.split("pid=")[1:]:
                pid = int(chunk.split(",")[0])
                if pid in pids:
                    out.append((pid, ip, int(port)))
    return out


def _hold(num_cpus: int, num_gpus: int, temp_dir: str) -> None:
    import ray

    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp_dir,
        configure_logging=False,
    )
    address = ray.get_runtime_context().gcs_address

    def _term(*_):
        ray.shutdown()
        os._exit(0)

    signal.signal(signal.SIGTERM, _term)
    print("ADDRESS", address, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    _hold(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
