"""`nnn embed --backend onnx|openvino [--quantize int8]`: the export cache, provenance, mismatch warnings, parity.

Cache mechanics run on a tiny sentence-transformers model made here (2 layers, width 32, the default
model's vocabulary), so an export takes a second; parity with torch runs on the real default model
(all-MiniLM-L6-v2), exported once per session into a private cache directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from nnn_cli.cli import app  # noqa: E402
from nnn_cli.embed.backends import encode_bucketed, load_text_encoder, resolve_backend  # noqa: E402
from nnn_cli.embed.export import cache_root, ensure_export, file_checksum, source_checksum  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "A man is riding a brown horse along the beach at sunset today.",
    "Two young children are playing football in a green park after school.",
    "The chef slices fresh vegetables on a wooden board in the kitchen.",
    "A small airplane flies low over snowy mountains under a clear sky.",
    "An old woman reads a thick book on a bench beside the river.",
    "Open the file for reading and return a stream.",
    "Return the number of items in a container.",
    "A text editor for the terminal with syntax highlighting.",
    "Send an email message through an SMTP server.",
    "Compress data with the LZMA algorithm.",
    "ok",
    "Split the pathname path into a pair (head, tail) where tail is the last pathname component and head is "
    "everything leading up to that; the tail part will never contain a slash.",
]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def run_cli(*args):
    return runner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """The session's private cache (tests/conftest.py), so the default model is exported once per session."""
    return Path(os.environ["NNN_CACHE_DIR"]) if os.environ.get("NNN_CACHE_DIR") else tmp_path_factory.mktemp("c")


@pytest.fixture
def cache(shared_cache, monkeypatch):
    monkeypatch.setenv("NNN_CACHE_DIR", str(shared_cache))
    return shared_cache


def _make_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer BERT sentence-transformers model (mean pooling, Normalize) with the default model's vocabulary."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import models  # type: ignore[no-redef]
    from transformers import BertConfig, BertModel

    from nnn_cli.embed.encoders import default_model_path

    src = default_model_path()
    hf = folder / "hf"
    hf.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, hf / name)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=64)
    st = SentenceTransformer(modules=[word, models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    out = folder / "tiny"
    st.save(str(out))
    shutil.rmtree(hf)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def _st_vectors(folder: Path, texts) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    v = SentenceTransformer(str(folder), device="cpu").encode(list(texts), convert_to_numpy=True)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _norm(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------
def test_cache_root_follows_nnn_cache_dir_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("NNN_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("NNN_CACHE_DIR")
    assert cache_root() == tmp_path / "xdg" / "nnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "nnn"


def test_int8_export_made_once_reused_and_hash_recorded(tiny_model, cache):
    notes: list[str] = []
    first = ensure_export(tiny_model, "onnx", "int8", notes.append)
    assert first.created_now and first.path.name == "onnx-int8.onnx" and first.path.is_file()
    assert any("exporting" in line for line in notes) and any("int8" in line for line in notes)
    manifest = json.loads((first.folder / "manifest.json").read_text())
    assert manifest["source_checksum"] == source_checksum(tiny_model)
    assert first.folder.name.endswith(source_checksum(tiny_model)[:16])
    for name in ("raw.onnx", "onnx-fp32.onnx", "onnx-int8.onnx", "tokenizer.json"):
        assert manifest["files"][name]["checksum"] == file_checksum(first.folder / name)
    assert first.checksum == manifest["files"]["onnx-int8.onnx"]["checksum"]
    stamp = first.path.stat().st_mtime_ns
    again: list[str] = []
    second = ensure_export(tiny_model, "onnx", "int8", again.append)
    assert not second.created_now and again == [] and second.checksum == first.checksum
    assert second.path.stat().st_mtime_ns == stamp  # not rewritten
    # the fp32 variant comes from the same export, without a second torch export
    fp32_notes: list[str] = []
    fp32 = ensure_export(tiny_model, "onnx", "none", fp32_notes.append)
    assert not fp32.created_now and fp32_notes == [] and fp32.path.name == "onnx-fp32.onnx"


def test_export_matches_torch_on_the_tiny_model(tiny_model, cache):
    enc = load_text_encoder(str(tiny_model), "cpu", backend="onnx")
    got = _norm(enc.encode_texts(TEXTS))
    want = _st_vectors(tiny_model, TEXTS)
    assert got.shape == want.shape and (got * want).sum(axis=1).min() > 0.9999


def test_changed_model_is_exported_again(tiny_model, cache, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "copy"
    shutil.copytree(tiny_model, model)
    before = ensure_export(model, "onnx", "none")
    old_vectors = _norm(load_text_encoder(str(model), "cpu", backend="onnx").encode_texts(TEXTS[:4]))
    weights = next(model.rglob("model.safetensors"))
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[key] = tensors[key] * 1.5 + 0.01
    save_file(tensors, str(weights), metadata={"format": "pt"})
    notes: list[str] = []
    after = ensure_export(model, "onnx", "none", notes.append)
    assert after.created_now and after.folder != before.folder and any("exporting" in n for n in notes)
    new_vectors = _norm(load_text_encoder(str(model), "cpu", backend="onnx").encode_texts(TEXTS[:4]))
    assert np.abs(new_vectors - old_vectors).max() > 1e-3
    np.testing.assert_allclose(new_vectors, _st_vectors(model, TEXTS[:4]), atol=1e-4)


def test_damaged_cache_is_rebuilt_with_a_note(tiny_model, cache, monkeypatch):
    good = ensure_export(tiny_model, "onnx", "int8")
    data = bytearray(good.path.read_bytes())
    good.path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    notes: list[str] = []
    rebuilt = ensure_export(tiny_model, "onnx", "int8", notes.append)
    assert rebuilt.created_now and any("damaged" in n and "onnx-int8.onnx" in n for n in notes)
    assert file_checksum(rebuilt.path) == rebuilt.checksum
    # same size, flipped bytes: found by the checksum once the mtime changed
    data = bytearray(rebuilt.path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    rebuilt.path.write_bytes(bytes(data))
    os.utime(rebuilt.path, ns=(1, 1))
    notes.clear()
    again = ensure_export(tiny_model, "onnx", "int8", notes.append)
    assert again.created_now and any("damaged" in n for n in notes)
    assert file_checksum(again.path) == again.checksum
    # a damaged torch export (raw.onnx) and tokenizer: exported again from the model folder
    (again.folder / "raw.onnx").write_bytes(b"not onnx")
    (again.folder / "onnx-fp32.onnx").unlink()
    notes.clear()
    fp32 = ensure_export(tiny_model, "onnx", "none", notes.append)
    assert any("raw.onnx" in n and "damaged" in n for n in notes) and any("exporting" in n for n in notes)
    enc = load_text_encoder(str(tiny_model), "cpu", backend="onnx")
    assert enc.exported.checksum == fp32.checksum
    assert (_norm(enc.encode_texts(TEXTS[:3])) * _st_vectors(tiny_model, TEXTS[:3])).sum(axis=1).min() > 0.9999


def test_fp32_weights_lie_beside_the_graph_checksummed_and_rebuilt(tiny_model, cache):
    """onnx-fp32.onnx keeps its weights in onnx-fp32.onnx.data (a session maps them): both files are
    checksummed, the recorded export checksum covers both, and a damaged weights file is rebuilt."""
    import hashlib

    good = ensure_export(tiny_model, "onnx", "none")
    data = good.folder / "onnx-fp32.onnx.data"
    manifest = json.loads((good.folder / "manifest.json").read_text())
    sums = [manifest["files"][n]["checksum"] for n in ("onnx-fp32.onnx", "onnx-fp32.onnx.data")]
    assert sums == [file_checksum(good.path), file_checksum(data)]
    assert good.checksum == hashlib.blake2b("\n".join(sums).encode(), digest_size=16).hexdigest()
    assert data.stat().st_size > 10 * good.path.stat().st_size  # the weights, not the graph
    want = _norm(load_text_encoder(str(tiny_model), "cpu", backend="onnx").encode_texts(TEXTS[:4]))
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 256] = bytes(256)  # same size, other bytes
    data.write_bytes(bytes(blob))
    notes: list[str] = []
    again = ensure_export(tiny_model, "onnx", "none", notes.append)
    assert again.created_now and any("damaged" in n and "onnx-fp32.onnx.data" in n for n in notes)
    assert again.checksum == good.checksum and file_checksum(data) == sums[1]
    got = _norm(load_text_encoder(str(tiny_model), "cpu", backend="onnx").encode_texts(TEXTS[:4]))
    np.testing.assert_array_equal(got, want)
    data.unlink()  # missing: rebuilt as well
    notes.clear()
    assert ensure_export(tiny_model, "onnx", "none", notes.append).created_now and data.is_file()
    assert not any(leftover.name.startswith(".") and leftover.is_dir() for leftover in good.folder.iterdir())


def test_int8_quantises_attention_and_ffn_up_projections_only(tiny_model, cache):
    """The int8 recipe: fused attention (QKV) and the FFN's widening MatMuls in int8, the attention
    output and FFN down-projections in fp32; a file made by another recipe is quantised again, once."""
    from collections import Counter

    import onnx

    from nnn_cli.embed.export import INT8_RECIPE, int8_nodes

    int8 = ensure_export(tiny_model, "onnx", "int8")
    fp32 = onnx.load(str(int8.folder / "onnx-fp32.onnx"), load_external_data=False)
    fp32_ops = Counter(n.op_type for n in fp32.graph.node)
    ops = Counter(n.op_type for n in onnx.load(str(int8.path), load_external_data=False).graph.node)
    layers = fp32_ops["Attention"]
    assert layers == 2 and fp32_ops["MatMul"] == 3 * layers  # the tiny model's fused graph
    assert ops["QAttention"] == layers and ops["MatMulInteger"] == layers and ops["MatMul"] == 2 * layers
    assert len(int8_nodes(int8.folder / "onnx-fp32.onnx")) == 2 * layers
    manifest_path = int8.folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["int8"] == INT8_RECIPE
    manifest["int8"] = "dynamic, per-channel, uint8 weights, MatMul/Attention/Gather"  # the earlier recipe
    manifest_path.write_text(json.dumps(manifest))
    notes: list[str] = []
    again = ensure_export(tiny_model, "onnx", "int8", notes.append)
    assert again.created_now and len(notes) == 2, notes
    assert "another recipe" in notes[0] and "quantising the export to int8" in notes[1]
    assert json.loads(manifest_path.read_text())["int8"] == INT8_RECIPE
    assert not ensure_export(tiny_model, "onnx", "int8").created_now


def test_unreadable_manifest_rebuilds(tiny_model, cache):
    good = ensure_export(tiny_model, "onnx", "none")
    (good.folder / "manifest.json").write_text("{ not json")
    notes: list[str] = []
    again = ensure_export(tiny_model, "onnx", "none", notes.append)
    assert again.created_now and any("manifest.json was unreadable" in n for n in notes)
    assert json.loads((again.folder / "manifest.json").read_text())["files"]["onnx-fp32.onnx"]


# ---------------------------------------------------------------------------
# length-sorted buckets
# ---------------------------------------------------------------------------
def test_buckets_restore_input_order_and_cap_padding():
    from tokenizers import Tokenizer

    from nnn_cli.embed.encoders import default_model_path

    tok = Tokenizer.from_file(str(default_model_path() / "tokenizer.json"))
    tok.no_padding()
    calls: list[tuple[int, int]] = []

    def run(feed):
        ids, mask = feed["input_ids"], feed["attention_mask"]
        calls.append(ids.shape)
        return np.stack([mask.sum(axis=1), ids.sum(axis=1)], axis=1).astype(np.float32)

    texts = TEXTS * 7
    out = encode_bucketed(tok, texts, ["input_ids", "attention_mask"], run, 2, bucket_tokens=64)
    want = [(len(e.ids), sum(e.ids)) for e in tok.encode_batch(texts)]
    np.testing.assert_array_equal(out, np.asarray(want, dtype=np.float32))
    assert all(rows * width <= 64 or rows == 1 for rows, width in calls)
    assert len(calls) > 1 and sum(rows for rows, _ in calls) == len(texts)


# ---------------------------------------------------------------------------
# nnn embed end to end: provenance, nnn info, warnings, bad input
# ---------------------------------------------------------------------------
def _attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def test_cli_embed_onnx_int8_records_provenance_and_info_shows_it(tiny_model, cache, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    res = run_cli("embed", tmp_path / "t.txt", "-o", tmp_path / "g.h5", "-m", tiny_model, "--backend", "onnx",
                  "--quantize", "int8")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "onnx int8 cpu" in res.stderr
    attrs = _attrs(tmp_path / "g.h5")
    exported = ensure_export(tiny_model, "onnx", "int8")
    assert attrs["backend"] == "onnx" and attrs["quantization"] == "int8" and attrs["precision"] == "int8"
    assert attrs["export_checksum"] == exported.checksum and attrs["model_checksum"] == source_checksum(tiny_model)
    info = run_cli("info", tmp_path / "g.h5", "--json")
    assert info.exit_code == 0, info.stderr
    recorded = json.loads(info.stdout)["attrs"]
    assert recorded["backend"] == "onnx" and recorded["quantization"] == "int8"
    assert recorded["export_checksum"] == exported.checksum
    # torch runs record their backend too
    res = run_cli(
        "embed", tmp_path / "t.txt", "-o", tmp_path / "t.h5", "-m", tiny_model, "--backend", "torch", "--json"
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["backend"] == "torch" and doc["quantization"] == "none"
    attrs = _attrs(tmp_path / "t.h5")
    assert attrs["backend"] == "torch" and attrs["quantization"] == "none" and "export_checksum" not in attrs


def test_backend_mismatch_warns_in_search_eval_and_bias(tiny_model, cache, tmp_path):
    (tmp_path / "q.txt").write_text("\n".join(TEXTS[:6]) + "\n")
    (tmp_path / "g.txt").write_text("\n".join(TEXTS[6:]) + "\n")
    for name, flags in (
        ("q8", ["--backend", "onnx", "--quantize", "int8"]),
        ("qt", ["--backend", "torch"]),
        ("q32", ["--backend", "onnx"]),
    ):
        assert (
            run_cli("embed", tmp_path / "q.txt", "-o", tmp_path / f"{name}.h5", "-m", tiny_model, *flags).exit_code == 0
        )
    assert (
        run_cli("embed", tmp_path / "g.txt", "-o", tmp_path / "g.h5", "-m", tiny_model, "--backend", "torch").exit_code
        == 0
    )
    res = run_cli("search", tmp_path / "q8.h5", "--gallery", tmp_path / "g.h5", "-o", tmp_path / "r.jsonl")
    assert res.exit_code == 0, res.stderr
    assert "warning: these embeddings were computed with different backends" in res.stderr
    assert "onnx int8" in res.stderr and "torch fp32" in res.stderr
    res = run_cli("search", tmp_path / "q32.h5", "--gallery", tmp_path / "g.h5", "-o", tmp_path / "r3.jsonl")
    assert res.exit_code == 0 and "note: these embeddings" in res.stderr and "warning" not in res.stderr
    res = run_cli("search", tmp_path / "qt.h5", "--gallery", tmp_path / "g.h5", "-o", tmp_path / "r2.jsonl")
    assert res.exit_code == 0 and "different backends" not in res.stderr
    res = run_cli("bias", tmp_path / "g.h5", "--reference", tmp_path / "q8.h5", "--alpha", "0.5",
                  "--k", "2", "-o", tmp_path / "b.h5")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "different backends" in res.stderr
    truth = tmp_path / "truth.npy"
    np.save(truth, np.arange(6) % 6)
    res = run_cli("eval", "--queries", tmp_path / "q8.h5", "--gallery", tmp_path / "g.h5", "--truth", truth,
                  "--bias", tmp_path / "b.h5")  # fmt: skip
    assert "different backends" in res.stderr


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--backend", "torch", "--quantize", "int8"], "--quantize int8 needs --backend onnx"),
        (["--backend", "openvino", "--quantize", "int8"], "openvino runs the fp32 export only"),
        (["--backend", "onnx", "--precision", "fp16"], "--precision fp16"),
        (["--backend", "onnx", "--device", "cuda"], "runs on the CPU"),
    ],
)
def test_bad_backend_combinations_exit_2_with_one_line(tiny_model, cache, tmp_path, flags, words):
    (tmp_path / "t.txt").write_text("a\nb\n")
    res = run_cli("embed", tmp_path / "t.txt", "-o", tmp_path / "o.h5", "-m", tiny_model, *flags)
    assert res.exit_code == 2
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.h5").exists()


def test_onnx_backend_refuses_a_non_sentence_transformers_model(tmp_path, cache):
    import torch

    class Enc(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :4]

    torch.jit.script(Enc()).save(str(tmp_path / "enc.pt"))
    (tmp_path / "t.txt").write_text("a\n")
    res = run_cli("embed", tmp_path / "t.txt", "-o", tmp_path / "o.h5", "-m", tmp_path / "enc.pt", "--backend", "onnx")
    assert res.exit_code == 2 and "use --backend torch" in res.stderr
    # auto quietly falls back to torch for such models
    assert resolve_backend("auto", None, str(tmp_path / "enc.pt"), "cpu") == ("torch", "none")


def test_auto_backend_choice(tiny_model):
    assert resolve_backend("auto", None, str(tiny_model), "cpu") == ("onnx", "none")
    assert resolve_backend("auto", "int8", str(tiny_model), "cpu") == ("onnx", "int8")
    assert resolve_backend("auto", None, str(tiny_model), "cuda") == ("torch", "none")
    assert resolve_backend("torch", None, str(tiny_model), "cpu") == ("torch", "none")


# ---------------------------------------------------------------------------
# the default model: parity with torch, and nnn query from the cache
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_vectors():
    from sentence_transformers import SentenceTransformer

    from nnn_cli.embed.encoders import default_model_path

    texts = TEXTS + [f"{a} {b}" for a, b in zip(TEXTS, reversed(TEXTS))]
    st = SentenceTransformer(str(default_model_path()), device="cpu")
    return texts, _norm(st.encode(texts, convert_to_numpy=True))


def test_default_model_onnx_fp32_parity_and_int8_neighbours(default_vectors, cache):
    texts, want = default_vectors
    fp32 = _norm(load_text_encoder(None, "cpu", backend="onnx").encode_texts(texts))
    assert (fp32 * want).sum(axis=1).min() >= 0.99
    np.testing.assert_allclose(fp32, want, atol=1e-4)
    int8 = _norm(load_text_encoder(None, "cpu", backend="onnx", quantize="int8").encode_texts(texts))
    cos = (int8 * want).sum(axis=1)
    assert cos.min() >= 0.95, cos.min()
    queries, gallery = slice(0, 12), slice(12, None)
    k = 5

    def top(v):
        return np.argsort(-(v[queries] @ v[gallery].T), axis=1, kind="stable")[:, :k]

    agree = np.mean([len(set(a) & set(b)) / k for a, b in zip(top(int8), top(want))])
    assert agree >= 0.8, agree
    if importlib_util_find("openvino"):
        ov = _norm(load_text_encoder(None, "cpu", backend="openvino").encode_texts(texts))
        assert (ov * want).sum(axis=1).min() >= 0.99


def importlib_util_find(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_query_uses_the_gallerys_backend_from_the_cache(default_vectors, cache, tmp_path):
    from nnn_cli import jobs

    texts, _ = default_vectors
    (tmp_path / "g.txt").write_text("\n".join(texts) + "\n")
    assert run_cli("embed", tmp_path / "g.txt", "-o", tmp_path / "g8.h5", "--backend", "onnx", "--quantize",
                   "int8").exit_code == 0  # fmt: skip
    res = jobs.query("a text editor for the terminal", tmp_path / "g8.h5", top_k=3)
    assert res.summary["results"][0]["results"][0]["index"] == 7 and res.notes == []
    forced = jobs.query("a text editor for the terminal", tmp_path / "g8.h5", top_k=3, backend="onnx")
    assert any("onnx int8" in n and "onnx fp32" in n for n in forced.notes)
    # whole process, export cached: no torch import on the way
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import atexit, sys; sys.argv = ['nnn', 'query', 'a text editor', '--gallery', sys.argv[1], '--json'];"
        "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr, flush=True))\n"
        "from nnn_cli.cli import main\nmain()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "g8.h5")], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "NO-TORCH" in proc.stderr and json.loads(proc.stdout.splitlines()[0])["query_text"] == "a text editor"


def test_a_cached_export_runs_without_torch(tiny_model, cache, tmp_path):
    ensure_export(tiny_model, "onnx", "int8")
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    copy = tmp_path / "uncached"
    shutil.copytree(tiny_model, copy)
    (copy / "README.md").write_text("ignored by the checksum")
    with open(next(copy.rglob("config.json")), "a") as fh:
        fh.write("\n")  # another model folder: not in the cache
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NNN_CACHE_DIR": str(cache)}

    def nnn_without_torch(model: Path, out: str) -> subprocess.CompletedProcess:
        code = (
            "import sys; sys.modules['torch'] = None\nfrom nnn_cli.cli import main\n"
            f"sys.argv = ['nnn', 'embed', {str(tmp_path / 't.txt')!r}, '-o', {str(tmp_path / out)!r}, "
            f"'-m', {str(model)!r}, '--backend', 'onnx', '--quantize', 'int8']\nmain()\n"
        )
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)

    proc = nnn_without_torch(tiny_model, "o.h5")
    assert proc.returncode == 0, proc.stderr
    assert _attrs(tmp_path / "o.h5")["backend"] == "onnx"
    proc = nnn_without_torch(copy, "u.h5")
    assert proc.returncode == 2 and "make setup-embed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # a refused command says one line (its notes are held)
    assert not (tmp_path / "u.h5").exists()


# ---------------------------------------------------------------------------
# session options and batching: CPU spent, vectors unchanged
# ---------------------------------------------------------------------------
def test_session_threads_sleep_and_batching_keeps_the_vectors(default_vectors, cache):
    """The pool does not spin (allow_spinning 0); one call per text, 512-text calls and tiny buckets
    give the same vectors (float tolerance) and the same top-10 neighbours."""
    from nnn_cli.embed.backends import EXPORT_BATCH_SIZE

    texts, want = default_vectors
    enc = load_text_encoder(None, "cpu", backend="onnx")
    assert enc.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert enc.batch_size == EXPORT_BATCH_SIZE > 64
    many = list(texts)
    wide = _norm(enc.encode_texts(many))
    single = _norm(np.concatenate([enc.encode_texts([t]) for t in many]))
    tiny = _norm(encode_bucketed(enc.tokenizer, many, enc.inputs, enc._run, enc.dim, bucket_tokens=16))
    for other in (single, tiny):
        np.testing.assert_allclose(other, wide, atol=2e-5)
        np.testing.assert_array_equal(_top10(other), _top10(wide))
    np.testing.assert_allclose(wide, want, atol=1e-4)


def _top10(v: np.ndarray) -> np.ndarray:
    return np.argsort(-(v @ v.T), axis=1, kind="stable")[:, :10]


def test_embed_batch_size_defaults_to_the_backends_own(tiny_model, cache, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    for i, (flags, want) in enumerate(
        (
            (["--backend", "onnx"], 512),
            (["--backend", "onnx", "--quantize", "int8"], 512),
            (["--backend", "torch"], 64),
            (["--backend", "onnx", "-B", "5"], 5),
        )
    ):
        out = tmp_path / f"b{i}.h5"
        res = run_cli("embed", tmp_path / "t.txt", "-o", out, "-m", tiny_model, *flags)
        assert res.exit_code == 0, res.stderr
        assert int(_attrs(out)["batch_size"]) == want, flags
    with h5py.File(tmp_path / "b0.h5", "r") as wide, h5py.File(tmp_path / "b3.h5", "r") as narrow:
        np.testing.assert_allclose(wide["embeddings"][:], narrow["embeddings"][:], atol=1e-5)  # 512 and -B 5
