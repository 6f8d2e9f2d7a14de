"""The writers' lock of a LanceDB table on S3 (moto's S3 server on 127.0.0.1, started and stopped by the test):
a lease object taken with a conditional write.  A second `nnn bias --in-place` waits --wait seconds, then exits
2 with one line naming the holder; concurrent holders never overlap (no lost update); a dead holder's lock is
taken over once it has gone a whole lease without renewal, a live holder's never; the lock object is gone after
release."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("lancedb")
pytest.importorskip("botocore")
from store_cases import assert_clean_error, assert_ok, run

from nnn_cli.data.stores.objlock import lock_key, s3_client, s3_lease_lock
from nnn_cli.errors import BusyError

os.environ.setdefault("LANCEDB_LOG", "error")
BUCKET = "nnn-lock"


@pytest.fixture(scope="module")
def s3():
    server_mod = pytest.importorskip("moto.server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        options = {
            "aws_endpoint": f"http://127.0.0.1:{port}",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "aws_region": "us-east-1",
            "allow_http": "true",
        }
        s3_client(options, 10).create_bucket(Bucket=BUCKET)
        yield options
    finally:
        server.stop()


def cli_options(options: dict) -> list[str]:
    return [a for key, value in options.items() for a in ("--store-option", f"{key}={value}")]


def exists(client, key: str) -> bool:
    try:
        client.head_object(Bucket=BUCKET, Key=key)
        return True
    except client.exceptions.ClientError:
        return False


def test_second_writer_waits_then_names_holder(s3, tmp_path, hub_files):
    from nnn_cli.data.stores.lance import LanceStore

    uri = f"lancedb:s3://{BUCKET}/db"
    opts = cli_options(s3)
    bias = tmp_path / "bias.h5"
    assert_ok(run("bias", hub_files["gallery"], "-r", hub_files["reference"], "--alpha", "0.75", "--k", 16, "-o", bias))
    assert_ok(run("export", hub_files["gallery"], "--bias", bias, "--to", uri, "--table", "items", *opts))
    in_place = ("bias", uri, "--table", "items", "--column", "embedding", "-r", hub_files["reference"], "--in-place",
                "--alpha", "0.75", "--k", 16, *opts)  # fmt: skip
    client = s3_client(s3, 10)
    _, key = lock_key(f"s3://{BUCKET}/db", "items.lance")
    assert key == "db/.items.lance.lock"
    store = LanceStore(uri, 10, s3)
    with store.lock("items", 0):
        assert exists(client, key)
        holder = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())["holder"]
        assert holder.startswith(f"pid {os.getpid()} on {socket.gethostname()}")
        t0 = time.monotonic()
        res = run(*in_place, "--wait", 1)
        assert time.monotonic() - t0 >= 1
        assert_clean_error(res, "lancedb:s3://nnn-lock/db", "another nnn run is writing", f"pid {os.getpid()}",
                           "--wait", secret="aws_secret")  # fmt: skip
    assert not exists(client, key)  # released: the object is gone
    assert_ok(run(*in_place, "--wait", 1))
    assert not exists(client, key)


def test_holders_never_overlap(s3):
    """Four threads, each with its own client, add 1 to a counter object five times under the lock (read,
    pause, write): no increment is lost."""
    bucket, key = BUCKET, "race/.counter.lock"
    setup = s3_client(s3, 10)
    setup.put_object(Bucket=bucket, Key="race/counter", Body=b"0")
    errors: list[BaseException] = []

    def worker() -> None:
        client = s3_client(s3, 10)
        try:
            for _ in range(5):
                with s3_lease_lock(client, bucket, key, 120, "test"):
                    value = int(client.get_object(Bucket=bucket, Key="race/counter")["Body"].read())
                    time.sleep(0.02)
                    client.put_object(Bucket=bucket, Key="race/counter", Body=str(value + 1).encode())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert int(setup.get_object(Bucket=bucket, Key="race/counter")["Body"].read()) == 20
    assert not exists(setup, key)


def test_dead_holder_taken_over_after_a_lease_live_holder_never(s3):
    client = s3_client(s3, 10)
    key = "dead/.items.lance.lock"
    dead = {"holder": "pid 999999 on elsewhere since 2026-01-01 00:00:00: nnn bias", "renewal": 3, "at": 0}
    client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(dead).encode())  # left by a kill -9
    with pytest.raises(BusyError, match="pid 999999 on elsewhere"):  # --wait shorter than the lease
        with s3_lease_lock(client, BUCKET, key, 0.5, "lancedb:s3://b/db table 'items'", lease=2.0):
            pass
    with s3_lease_lock(client, BUCKET, key, 30, "test", lease=1.0):
        body = json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert body["holder"].startswith(f"pid {os.getpid()} ")
    assert not exists(client, key)
    # a live holder renews (every lease / 3 = 2 s): a waiter that waits longer than a lease still does not get it
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with s3_lease_lock(s3_client(s3, 10), BUCKET, key, 10, "test", lease=6.0):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(30)
        with pytest.raises(BusyError, match="another nnn run"):
            with s3_lease_lock(client, BUCKET, key, 8, "test", lease=6.0):
                pass
    finally:
        release.set()
        thread.join(timeout=30)
    assert not exists(client, key)


def test_export_append_and_replace_wait_for_the_lock(s3, tmp_path, hub_files):
    from nnn_cli.data.stores.lance import LanceStore
    from nnn_cli.jobs.export import ExportRequest, run_export

    uri = f"lancedb:s3://{BUCKET}/exp"
    opts = cli_options(s3)
    bias = tmp_path / "bias.npy"
    np.save(bias, np.zeros(300, np.float32))
    assert_ok(run("export", hub_files["gallery"], "--bias", bias, "--to", uri, "--table", "items", "--force", *opts))
    with LanceStore(uri, 10, s3).lock("items", 0):
        for mode in ("--replace", "--append"):
            res = run("export", hub_files["gallery"], "--bias", bias, "--to", uri, "--table", "items", "--force",
                      mode, "--wait", 1, *opts)  # fmt: skip
            assert_clean_error(res, "another nnn run is writing", f"pid {os.getpid()}")
        with pytest.raises(BusyError):
            run_export(ExportRequest.build(hub_files["gallery"], bias, uri, table="items", force=True, replace=True,
                                           storage_options=s3, wait=0.5))  # fmt: skip
    assert_ok(run("export", hub_files["gallery"], "--bias", bias, "--to", uri, "--table", "items", "--force",
                  "--replace", *opts))  # fmt: skip
