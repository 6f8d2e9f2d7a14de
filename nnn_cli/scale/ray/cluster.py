"""The Ray behind `--engine ray`, with the CLI's manners: who starts it, who owns its processes, what reaches stderr.

* **A private cluster** (``address=None``) is started by a *holder* process in a session of its own
  (``start_new_session``): ``ray.init`` there starts GCS, raylet, the agents and the workers as the holder's
  descendants, all in that session, bound to 127.0.0.1.  The holder is a child subreaper (Linux), so nothing it
  started can escape to init.  The driver keeps the write end of a pipe whose read end only the holder has;
  when the driver ends, however it ends (``kill -9`` included), the kernel closes that end, the holder reads
  EOF and ends every process of its session and every descendant (SIGTERM, then SIGKILL after
  :data:`STOP_GRACE` seconds), then itself.  The driver then connects to the cluster as a client.  A terminal's
  Ctrl-C reaches the driver only (the cluster is not in the terminal's process group).  Never ``ray stop``.
* **An existing cluster** (``--address HOST:PORT``, ``ray://HOST:PORT``, ``auto``) is checked first, within
  ``io_timeout`` seconds: the address must parse, the host must accept a TCP connection and answer the
  HTTP/2 preface that every gRPC server (Ray's GCS and Ray Client) answers.  Anything else is one line naming
  the address (:class:`~nnn_cli.errors.ParameterError`, exit 2), never Ray's endless reconnect loop.
* **Quiet**: Ray's Python loggers get a ``NullHandler`` (no "Token authentication ..." line through Python's
  last-resort handler), workers' output stays off the driver (``log_to_driver=False``), usage stats off, the
  holder's stderr goes to a temporary file (quoted in the one line if the start fails).  ``NNN_DEBUG=1`` (or
  ``debug=True``) shows all of it.
* **Errors**: an exception raised in a task arrives as Ray's multi-line ``RayTaskError``; :func:`translate`
  turns it back into the task's own exception (an :class:`~nnn_cli.errors.NNNError` keeps its class and
  message) with a one-line message, and other Ray failures into :class:`ClusterError` (one line).
* **Signals**: ``ray.init`` replaces the SIGTERM handler (``sys.exit(15)``, and the core worker's C++ failure
  handler prints a stack dump); the handlers found before it are put back after it, so SIGINT/SIGTERM raise
  as everywhere else (:mod:`nnn_cli.signals`) and the CLI exits 130/143 with its one line.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from nnn_cli.errors import DependencyError, NNNError, ParameterError, install_hint
from nnn_cli.signals import Terminated, raise_if_interrupted

"""Seconds to reach an existing cluster (``--io-timeout``, ``NNN_IO_TIMEOUT``)."""
START_TIMEOUT = 300.0
"""Seconds a private cluster may take to start (a loaded machine takes tens of seconds)."""
STOP_GRACE = 2.0
"""Seconds between SIGTERM and SIGKILL when a private cluster is torn down."""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
_HOLDER = "from nnn_cli.scale.ray.cluster import _holder_main; _holder_main()"
_CLUSTER_KEYS = ("num_cpus", "num_gpus", "resources", "object_store_memory", "_temp_dir", "_system_config")
"""``init_kwargs`` that shape the cluster itself: they go to the holder's ``ray.init`` only."""


class ClusterError(RuntimeError):
    """Ray failed for a reason other than the user's input (a worker or node died, a task raised a non-nnn
    exception that cannot be rebuilt): an unexpected failure, exit 1, one line."""


def debug_enabled(debug: bool | None = None) -> bool:
    """``debug`` if given, else whether ``NNN_DEBUG`` is set (then Ray's own output is shown)."""
    return bool(os.environ.get("NNN_DEBUG")) if debug is None else bool(debug)


def one_line(text: object, limit: int = 500) -> str:
    """The first non-empty line of ``text`` without ANSI colour codes, at most ``limit`` characters."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(text)).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Importing Ray quietly
# ---------------------------------------------------------------------------
def import_ray(private: bool, debug: bool | None = None) -> Any:
    """``import ray`` with the environment it reads at import set first (loopback-only private clusters, no
    usage stats), and Ray's Python loggers quiet unless debugging."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if private:  # read by Ray at import: keeps a private cluster's addresses on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise DependencyError(f"--engine ray needs Ray: {install_hint('ray')}") from None
    quiet_ray_logging(debug)
    return ray


def quiet_ray_logging(debug: bool | None = None) -> None:
    """Give the ``ray`` logger a ``NullHandler``: with ``configure_logging=False`` Ray's warnings would otherwise
    reach stderr through Python's last-resort handler.  An application's own logging config still gets them."""
    if debug_enabled(debug):
        return
    logger = logging.getLogger("ray")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def translate(exc: BaseException, ray: Any) -> BaseException | None:
    """The exception to raise instead of Ray's ``exc`` (None: not Ray's, raise it as it is).

    An exception raised in a task comes back as its own class with a one-line message (an
    :class:`~nnn_cli.errors.NNNError` exactly as raised); other Ray failures as :class:`ClusterError`."""
    exceptions = ray.exceptions
    if isinstance(exc, exceptions.RayTaskError):
        cause: BaseException = exc
        while isinstance(cause, exceptions.RayTaskError) and getattr(cause, "cause", None) is not None:
            cause = cause.cause
        if isinstance(cause, exceptions.RayTaskError):  # no cause kept: only Ray's text
            return ClusterError(f"a Ray task failed: {one_line(getattr(cause, 'cause_cls', type(cause)).__name__)}")
        if isinstance(cause, exceptions.RayError):
            return translate(cause, ray)
        return _one_line_copy(cause)
    if isinstance(exc, exceptions.RayError):
        return ClusterError(f"Ray: {type(exc).__name__}: {one_line(exc) or 'no message'}")
    return None


def _one_line_copy(exc: BaseException) -> BaseException:
    """``exc`` itself when its message is one line, else a copy whose message is its first line."""
    message = str(exc)
    line = one_line(message)
    if message == line:
        return exc
    with contextlib.suppress(Exception):
        twin = copy.copy(exc)
        twin.args = (line,)
        if str(twin) == line:
            return twin
    if isinstance(exc, NNNError):
        return NNNError(line)
    return ClusterError(f"a Ray task failed: {type(exc).__name__}: {line}")


# ---------------------------------------------------------------------------
# Existing clusters: the address, checked within io_timeout
# ---------------------------------------------------------------------------
def _bad_address(address: str, why: str) -> ParameterError:
    return ParameterError(f"--address {address}: {why}")


def parse_address(address: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``HOST:PORT`` (scheme ``""``) or ``ray://HOST:PORT``; one line otherwise."""
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    elif scheme != "ray":
        raise _bad_address(address, f"unknown scheme {scheme}://; use HOST:PORT, ray://HOST:PORT or auto")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not _HOST.match(host) or not 0 < int(port) < 65536:
        raise _bad_address(address, "not an address: use HOST:PORT (the head's GCS port), ray://HOST:PORT or auto")
    return scheme, host.strip("[]"), int(port)


def _resolve_auto(address: str) -> str:
    """The address ``auto`` stands for (``RAY_ADDRESS``, else the latest cluster on this machine)."""
    import_ray(private=False)
    try:
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address(address)
    except Exception as exc:
        raise _bad_address(address, f"no running Ray cluster found ({one_line(exc)})") from None
    if not found:
        raise _bad_address(address, "no running Ray cluster found on this machine")
    return str(found)


def probe(address: str, host: str, port: int, timeout: float) -> None:
    """Connect to ``host:port`` and check that it answers the HTTP/2 preface as a gRPC server does, all within
    ``timeout`` seconds; raise a one-line :class:`ParameterError` naming ``address`` otherwise."""
    deadline = time.monotonic() + timeout
    within = f"within {timeout:g}s (--io-timeout)"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_HTTP2_PREFACE)
            head = b""
            while len(head) < 9:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
    except socket.gaierror:
        raise _bad_address(address, f"unknown host {host}") from None
    except ConnectionRefusedError:
        raise _bad_address(address, "connection refused: no Ray cluster listens there") from None
    except TimeoutError:
        raise _bad_address(address, f"no answer {within}: no Ray cluster reachable there") from None
    except OSError as exc:
        raise _bad_address(address, f"cannot connect ({exc.strerror or one_line(exc)})") from None
    if len(head) < 9 or head[3] != 0x04:  # a gRPC server's first frame is SETTINGS (type 4)
        raise _bad_address(address, "not a Ray cluster (it does not answer as Ray's GCS or Ray Client do)")


def _seconds(io_timeout: float | None) -> float:
    """``io_timeout``, else the run's ``--io-timeout`` / ``NNN_IO_TIMEOUT`` / 30 s (the one I/O timeout of
    :mod:`nnn_cli.data.objstore`, shared by object stores and clusters)."""
    from nnn_cli.data.objstore import check_io_timeout
    from nnn_cli.data.objstore import io_timeout as run_io_timeout

    return run_io_timeout() if io_timeout is None else check_io_timeout(io_timeout)


def check_address(address: str, io_timeout: float | None = None) -> str:
    """The address to give ``ray.init``, once it parsed and answered within ``io_timeout`` seconds (None:
    the run's ``--io-timeout``, ``NNN_IO_TIMEOUT`` or 30 s)."""
    io_timeout = _seconds(io_timeout)
    target = _resolve_auto(address) if address.strip() == "auto" else address.strip()
    _, host, port = parse_address(target)
    probe(address if target == address.strip() else f"{address} ({target})", host, port, io_timeout)
    return target


# ---------------------------------------------------------------------------
# Private clusters: a holder process owning a session, tied to the driver by a pipe
# ---------------------------------------------------------------------------
class PrivateCluster:
    """A Ray cluster on 127.0.0.1 for one run, owned by a holder process (see the module docstring)."""

    def __init__(
        self,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        init_kwargs: dict | None = None,
        debug: bool | None = None,
    ):
        self.config = {
            "num_cpus": num_cpus or os.cpu_count(),
            **({"num_gpus": num_gpus} if num_gpus is not None else {}),
            **{k: v for k, v in (init_kwargs or {}).items() if k in _CLUSTER_KEYS},
        }
        self.debug = debug_enabled(debug)
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self._pipe_w: int | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the holder and wait for the cluster's GCS address."""
        try:
            payload = json.dumps(self.config)
        except TypeError as exc:
            raise ParameterError(f"init_kwargs must be JSON values for a private cluster ({exc})") from None
        read_end, self._pipe_w = os.pipe()  # both non-inheritable: only the holder gets read_end, by pass_fds
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        env.pop("RAY_ADDRESS", None)  # the holder starts a cluster, never joins the one RAY_ADDRESS names
        root = str(Path(__file__).resolve().parents[3])  # the folder holding nnn_cli, for the holder's import
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._log = None if self.debug else tempfile.TemporaryFile(prefix="nnn-ray-holder-")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _HOLDER, str(read_end), payload],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._log,
                pass_fds=(read_end,),
                start_new_session=True,
                env=env,
            )
        finally:
            os.close(read_end)
        line = self._read_line(timeout)
        if line.startswith("ADDRESS "):
            self.address = line.split(" ", 1)[1].strip()
            return self.address
        why = line[len("ERROR ") :] if line.startswith("ERROR ") else self._log_tail() or "it exited"
        raise ClusterError(f"could not start a private Ray cluster: {one_line(why)}")

    def _read_line(self, timeout: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"ERROR it did not start within {timeout:g}s"
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
        return buf.decode("utf-8", "replace").splitlines()[0] if buf else ""

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        with contextlib.suppress(OSError):
            self._log.seek(0)
            lines = [ln for ln in self._log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
            return lines[-1] if lines else ""
        return ""

    def stop(self, wait: float = STOP_GRACE + 10) -> None:
        """Close the pipe (the holder then ends the cluster) and wait for the holder; kill its session if late."""
        if self._pipe_w is not None:
            os.close(self._pipe_w)
            self._pipe_w = None
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None


def private_auth() -> dict[str, str]:
    """Token authentication with a token of the run's own for a private cluster (Ray turns token auth on by
    default and would otherwise read or write ``~/.ray/auth_token``), unless the caller chose a mode
    (``RAY_AUTH_MODE``, then ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``).  Ray reads these at import."""
    if "RAY_AUTH_MODE" in os.environ:
        return {}
    if not _TOKEN:  # one per process: Ray's C++ side keeps the first token it read
        import secrets

        _TOKEN.append(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _TOKEN[0]}


_TOKEN: list[str] = []


def _refresh_auth() -> None:
    """Make a Ray imported before :func:`private_auth` set the environment read it again (as Ray's own
    ``_enable_token_auth`` does): its config (the auth mode) and its cached token."""
    with contextlib.suppress(Exception):
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, session id) of every process, from /proc (Linux)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(name)] = (fields[0], int(fields[1]), int(fields[3]))
    return table


def _cluster_pids(me: int) -> set[int]:
    """Live processes of this holder's session, and its descendants wherever they went (zombies excluded)."""
    table = _proc_table()
    session = os.getsid(me)
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [me]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    found |= {pid for pid, (_, _, sid) in table.items() if sid == session}
    return {pid for pid in found if pid != me and table.get(pid, ("Z",))[0] not in ("Z", "X")}


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _end_cluster() -> None:
    """In the holder: SIGTERM every process of the cluster, SIGKILL what is left after STOP_GRACE, exit.  Each
    round signals again whatever it finds, so a process started meanwhile (a start-up cut short) ends too."""
    me = os.getpid()
    try:
        for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                _reap()
                pids = _cluster_pids(me)
                if not pids:
                    os._exit(0)
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)
                time.sleep(0.05)
    except Exception:  # no /proc: the session is our process group
        with contextlib.suppress(OSError):
            os.killpg(me, signal.SIGKILL)
    os._exit(0)


def _become_subreaper() -> None:
    """Orphans of the cluster become our children instead of init's (Linux PR_SET_CHILD_SUBREAPER)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def _holder_main() -> None:
    """The holder process: start the cluster, print its address, end it when the driver's pipe closes."""
    read_end, config = int(sys.argv[1]), json.loads(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _become_subreaper()
    lock = threading.Lock()

    def end(*_: object) -> None:
        with lock:
            _end_cluster()

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(read_end, 4096):
                pass
        end()

    threading.Thread(target=watch, name="nnn-ray-watchdog", daemon=True).start()
    try:
        import ray

        ray.init(
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,
            **config,
        )
        address = ray.get_runtime_context().gcs_address
    except BaseException as exc:  # noqa: BLE001 - reported to the driver as one line
        print("ERROR", one_line(f"{type(exc).__name__}: {exc}"), flush=True)
        end()
    signal.signal(signal.SIGTERM, end)
    print("ADDRESS", address, flush=True)
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_stderr(debug: bool | None = None) -> Iterator[None]:
    """File descriptor 2 on /dev/null for the ``with`` body (Ray's C++ threads write there directly); nothing
    of ours is printed while a session is torn down.  A no-op when debugging."""
    if debug_enabled(debug):
        yield
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _init(ray: Any, **kwargs: Any) -> None:
    """``ray.init(**kwargs)``, with the SIGINT/SIGTERM handlers found before it put back after it."""
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        ray.init(**kwargs)
    except SystemExit as exc:  # Ray's own SIGTERM handler during init: sys.exit(15)
        if exc.code == signal.SIGTERM:
            raise Terminated() from None
        raise
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
    *,
    io_timeout: float | None = None,
    debug: bool | None = None,
) -> Iterator[Any]:
    """Yield the ``ray`` module with Ray initialised, and raise what fails inside as one-line exceptions.

    Reuses a connection the caller already holds (and leaves it).  ``address=None`` starts a
    :class:`PrivateCluster` on 127.0.0.1 for the ``with`` body and ends every process of it after
    (also when the driver is killed).  Otherwise ``address`` (``HOST:PORT``, ``ray://HOST:PORT`` or
    ``auto``) must answer within ``io_timeout`` seconds (None: the run's ``--io-timeout``); the cluster is
    left running."""
    auth = private_auth() if address is None else {}
    os.environ.update(auth)  # read by Ray at import (the driver presents the token; the holder inherits it)
    ray = import_ray(address is None, debug)
    if auth:
        _refresh_auth()
    driver = {"configure_logging": False, "log_to_driver": False}
    driver.update({k: v for k, v in (init_kwargs or {}).items() if k not in _CLUSTER_KEYS})
    cluster: PrivateCluster | None = None
    owned = False
    try:
        if not ray.is_initialized():
            owned = True  # ray.shutdown() after a failed init is harmless
            if address is None:
                cluster = PrivateCluster(num_cpus, num_gpus, init_kwargs, debug)
                _init(ray, address=cluster.start(), **{"_node_ip_address": "127.0.0.1", **driver})
            else:
                target = check_address(address, io_timeout)
                try:
                    _init(ray, address=target, **driver)
                except Exception as exc:  # it answered, but as another Ray (version, token): still the address
                    raise _bad_address(address, f"cannot join the Ray cluster there ({one_line(exc)})") from exc
        try:
            yield ray
        except KeyboardInterrupt as exc:
            # Ray's blocking calls turn the handler's exception into a plain KeyboardInterrupt (also for
            # SIGTERM): raise again what the signal handler recorded, so SIGTERM stays Terminated (143)
            if not isinstance(exc, Terminated):
                raise_if_interrupted()
            raise
        except Exception as exc:
            better = translate(exc, ray)
            if better is None or better is exc:
                raise
            raise better from exc
    finally:
        with _quiet_stderr(debug):  # the driver's C++ core worker logs shutdown races (tasks cut short) there
            try:
                if owned:
                    ray.shutdown()
            finally:
                if cluster is not None:
                    cluster.stop()
            for key, value in auth.items():
                if os.environ.get(key) == value:
                    del os.environ[key]


__all__ = [
    "ClusterError",
    "PrivateCluster",
    "check_address",
    "import_ray",
    "one_line",
    "parse_address",
    "probe",
    "ray_session",
    "translate",
]
