"""A writer's lock on an object store (S3 and S3-compatible stores), where no ``flock`` exists: a lease object
taken with a conditional write.

:func:`s3_lease_lock` writes the lock object ``.NAME.lock`` beside ``NAME`` with ``If-None-Match: *`` (S3
writes it only if no object of that key exists, atomically: of two writers exactly one succeeds), records
the holder (pid, host, start time, command) in it, and renews it every ``lease / 3`` seconds from a
background thread, each renewal an ``If-Match`` write on its own last ETag.  A second writer waits up to
``wait`` seconds, then raises :class:`~nnn_cli.errors.BusyError` naming the holder, as
:func:`nnn_cli.data.locks.exclusive_lock` does on a file system.  Release deletes the object if it is still
ours (``If-Match``).

A holder that dies without releasing (``kill -9``, a lost machine) stops renewing; a waiter that sees the same
ETag for ``lease`` seconds of its *own* clock (no clock is compared across machines) takes the lock over with
an ``If-Match`` write on that ETag, so of two such waiters only one wins.  Limits, said plainly: the store must
honour conditional writes (AWS S3 since 2024, MinIO, Cloudflare R2 and moto do; a store that ignores
``If-None-Match`` gives no lock at all); after a holder's death the table stays locked for up to ``lease``
seconds; and a holder stalled for longer than ``lease`` (suspended, swapped out) can lose its lock to a waiter
while it still writes: the renewal then fails and the lock is not deleted at release, but the two writes may
already have raced (LanceDB's own commit then refuses or orders them).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from nnn_cli.errors import BusyError, DependencyError, InputError, install_hint

LEASE = 30.0
"""Seconds a lock lives without renewal (renewed every LEASE / 3 while its holder runs)."""

POLL = 0.2


def _pick(opts: dict, *names: str) -> str | None:
    for name in names:
        value = opts.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def s3_client(storage_options: dict | None, io_timeout: float):
    """A botocore S3 client from LanceDB's object-store options (``aws_endpoint``, ``aws_access_key_id``, ...)
    or the environment."""
    try:
        import botocore.config
        import botocore.session
    except ImportError as exc:
        raise DependencyError(
            f"the lock on an s3:// LanceDB table needs botocore: {install_hint('lancedb')} ({exc})"
        ) from None
    opts = {str(k).lower(): v for k, v in (storage_options or {}).items()}
    endpoint = (
        _pick(opts, "aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT")
    )
    virtual = str(_pick(opts, "aws_virtual_hosted_style_request", "virtual_hosted_style_request") or "").lower()
    config = botocore.config.Config(
        connect_timeout=io_timeout,
        read_timeout=io_timeout,
        retries={"max_attempts": 2},
        s3={"addressing_style": "virtual" if virtual == "true" or not endpoint else "path"},
    )
    return botocore.session.get_session().create_client(
        "s3",
        region_name=_pick(opts, "aws_region", "region")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=_pick(opts, "aws_access_key_id", "access_key_id"),
        aws_secret_access_key=_pick(opts, "aws_secret_access_key", "secret_access_key"),
        aws_session_token=_pick(opts, "aws_session_token", "session_token", "token"),
        config=config,
    )


def lock_key(url: str, name: str) -> tuple[str, str]:
    """Bucket and key of the lock beside ``NAME`` in the folder ``url`` (``s3://bucket/prefix``)."""
    parts = urlsplit(url)
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/.{name}.lock" if prefix else f".{name}.lock"


def _status(exc: BaseException) -> tuple[int, str]:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0), str(
        response.get("Error", {}).get("Code") or ""
    )


def _record(renewal: int) -> bytes:
    command = " ".join(os.path.basename(a) for a in sys.argv[:2]) or "nnn"
    holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {command}"
    return json.dumps({"holder": holder, "renewal": renewal, "at": time.time()}).encode()


@contextlib.contextmanager
def s3_lease_lock(
    client, bucket: str, key: str, wait: float, label: str, what: str = "LanceDB table", lease: float = LEASE
) -> Iterator[str]:
    """Hold the lease lock ``s3://bucket/key`` for the ``with`` body (see the module's docstring)."""
    from botocore.exceptions import BotoCoreError, ClientError

    def fail(exc: BaseException, doing: str) -> InputError:
        status, code = _status(exc)
        detail = f"{code or type(exc).__name__}{f' (HTTP {status})' if status else ''}"
        return InputError(f"{label}: cannot {doing} the lock s3://{bucket}/{key}: {detail}")

    deadline = time.monotonic() + max(0.0, float(wait))
    seen: tuple[str, float] | None = None  # (ETag, when this run first saw it): a holder that stopped renewing
    etag = ""
    while not etag:
        try:
            etag = client.put_object(Bucket=bucket, Key=key, Body=_record(0), IfNoneMatch="*")["ETag"]
            break
        except ClientError as exc:
            status, _ = _status(exc)
            if status not in (409, 412):  # 412: the object exists; 409: a concurrent conditional write
                raise fail(exc, "take") from None
        except BotoCoreError as exc:
            raise fail(exc, "take") from None
        try:
            got = client.get_object(Bucket=bucket, Key=key)
            held, body = got["ETag"], got["Body"].read()
        except ClientError as exc:
            if _status(exc)[0] == 404:
                continue  # released meanwhile: try again at once
            raise fail(exc, "read") from None
        except BotoCoreError as exc:
            raise fail(exc, "read") from None
        now = time.monotonic()
        if seen is None or seen[0] != held:
            seen = (held, now)
        elif now - seen[1] >= lease:  # not renewed for a whole lease: its holder is gone; take it over
            try:
                etag = client.put_object(Bucket=bucket, Key=key, Body=_record(0), IfMatch=held)["ETag"]
                break
            except ClientError as exc:
                if _status(exc)[0] not in (404, 409, 412):
                    raise fail(exc, "take over") from None
                seen = None
                continue
        if now >= deadline:
            try:
                holder = json.loads(body).get("holder") or "another process"
            except (ValueError, AttributeError):
                holder = "another process"
            raise BusyError(
                f"{label}: another nnn run is writing this {what} ({holder}; lock s3://{bucket}/{key}); "
                f"waited {wait:g}s: try again later or give --wait a longer time"
            )
        time.sleep(POLL)

    stop = threading.Event()
    state = {"etag": etag, "lost": False}

    def renew() -> None:
        renewal = 0
        while not stop.wait(lease / 3):
            renewal += 1
            try:
                state["etag"] = client.put_object(Bucket=bucket, Key=key, Body=_record(renewal), IfMatch=state["etag"])[
                    "ETag"
                ]
            except ClientError as exc:
                if _status(exc)[0] in (404, 412):  # taken over after a stall longer than the lease
                    state["lost"] = True
                    return
            except BotoCoreError:
                pass  # a passing network error: the next renewal tries again

    thread = threading.Thread(target=renew, name="nnn-s3-lock", daemon=True)
    thread.start()
    try:
        yield f"s3://{bucket}/{key}"
    finally:
        stop.set()
        thread.join(timeout=5)
        if not state["lost"]:
            with contextlib.suppress(Exception):
                client.delete_object(Bucket=bucket, Key=key, IfMatch=state["etag"])
