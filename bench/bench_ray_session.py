"""Benchmark: what owning a private Ray costs, and how fast it is gone after ``kill -9`` of the driver.

Side by side in one run, alternating, each in a fresh Python process (Ray can be started once per process):

  in-process   the old way: ``ray.init(num_cpus=2, _node_ip_address="127.0.0.1", ...)`` in the driver itself
               (the cluster is the driver's children, in its session), one trivial task, ``ray.shutdown()``
  holder       ``nnn_cli.scale.ray.cluster.ray_session()``: a holder process in its own session starts the
               cluster, the driver connects to it, one trivial task, teardown (pipe closed, holder ends it all)
  kill -9      the holder way, then ``kill -9`` of the driver once the task ran: seconds until no process of
               the cluster is alive (psutil, by PID and create time)

Prints a table of wall seconds per round and the medians.  The machine may be shared: compare only the
columns of one run.

    python bench/bench_ray_session.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONPATH": str(REPO),
}
IN_PROCESS = """
import ray
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
         log_to_driver=False)
assert ray.get(ray.remote(lambda: 1).remote()) == 1
ray.shutdown()
"""
HOLDER = """
import sys, time
from nnn_cli.scale.ray.cluster import ray_session
with ray_session(num_cpus=2) as ray:
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
    if len(sys.argv) > 1:
        print("READY", flush=True)
        time.sleep(600)
"""


def _run(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def _kill9() -> float:
    import psutil

    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "wait"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    seen = {p.pid: p.create_time() for p in psutil.Process(proc.pid).children(recursive=True)}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.perf_counter()

    def alive() -> int:
        n = 0
        for pid, created in seen.items():
            try:
                p = psutil.Process(pid)
                n += p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                pass
        return n

    while alive() and time.perf_counter() - t0 < 60:
        time.sleep(0.05)
    left = alive()
    took = time.perf_counter() - t0
    if left:
        for pid in seen:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        raise SystemExit(f"{left} processes still alive 60 s after kill -9")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for i in range(args.rounds):
        a, b, c = _run(IN_PROCESS), _run(HOLDER), _kill9()
        rows.append((a, b, c))
        print(f"round {i + 1}: in-process {a:6.1f} s   holder {b:6.1f} s   gone after kill -9 {c:5.2f} s", flush=True)
    med = [statistics.median(col) for col in zip(*rows)]
    print(f"\n{'':10} {'in-process':>12} {'holder':>10} {'kill -9 -> gone':>16}")
    print(f"{'median':10} {med[0]:11.1f}s {med[1]:9.1f}s {med[2]:15.2f}s")
    print(f"holder / in-process: {med[1] / med[0]:.2f}x   (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
