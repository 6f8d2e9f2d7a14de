"""The paper's protocol from the shell: faithful baselines, leak check, reference fraction,
attribute bias per Section 3.3, both truths from one paired file."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli import app


def run(args, code=0):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def test_eval_runs_dis_and_plain_inverted_softmax_and_warns_about_the_gallery_bank(hub_files):
    p = hub_files
    res = run(
        [
            "eval",
            "-Q",
            p["queries"],
            "-g",
            p["gallery"],
            "-t",
            p["truth"],
            "-r",
            p["reference"],
            "-a",
            "0.75",
            "-k",
            "16",
            "--methods",
            "baseline,nnn,qbnorm,is,dbnorm_dis",
            "--json",
        ]
    )
    doc = json.loads(res.stdout)
    assert {"qbnorm", "is", "dbnorm_dis"} <= set(doc)
    assert doc["dbnorm_dis"]["gallery_bank"] == "gallery" and doc["dbnorm_dis"]["warnings"]
    assert "N10_kurtosis" in doc["baseline"]["hubness"] and "N1_skewness_dbnorm" in doc["nnn"]["hubness"]
    assert doc["leak"]["n_duplicates"] == 0
    with_bank = run(
        [
            "eval",
            "-Q",
            p["queries"],
            "-g",
            p["gallery"],
            "-t",
            p["truth"],
            "-r",
            p["reference"],
            "--methods",
            "baseline,dbnorm",
            "--gallery-bank",
            p["reference"],
            "--json",
        ]
    )
    assert "warnings" not in json.loads(with_bank.stdout)["dbnorm"]


def test_baseline_only_eval_needs_no_reference(hub_files):
    p = hub_files
    doc = json.loads(
        run(
            ["eval", "-Q", p["queries"], "-g", p["gallery"], "-t", p["truth"], "--methods", "baseline", "--json"]
        ).stdout
    )
    assert set(doc) >= {"baseline"} and "nnn" not in doc


def test_tune_reference_fraction_and_leak_check(hub_files, hub_data, tmp_path):
    p = hub_files
    out = tmp_path / "params.json"
    run(
        [
            "tune",
            "-Q",
            p["queries"],
            "-g",
            p["gallery"],
            "-t",
            p["truth"],
            "-r",
            p["reference"],
            "-o",
            out,
            "--reference-fraction",
            "0.25",
            "--seed",
            "3",
            "--alphas",
            "0.5,1",
            "--ks",
            "4,16",
            "--json",
        ]
    )
    doc = json.loads(out.read_text())
    assert doc["n_reference_used"] == 500 and doc["seed"] == 3 and doc["leak"]["n_duplicates"] == 0
    leaky = tmp_path / "leaky_ref.npy"
    np.save(leaky, np.vstack([hub_data.reference, hub_data.queries[:30]]))
    res = run(
        [
            "tune",
            "-Q",
            p["queries"],
            "-g",
            p["gallery"],
            "-t",
            p["truth"],
            "-r",
            leaky,
            "-o",
            out,
            "--alphas",
            "0.5",
            "--ks",
            "4",
        ]
    )
    assert "30 of 600 tuning queries" in res.output
    strict = run(
        [
            "tune",
            "-Q",
            p["queries"],
            "-g",
            p["gallery"],
            "-t",
            p["truth"],
            "-r",
            leaky,
            "-o",
            tmp_path / "p2.json",
            "--alphas",
            "0.5",
            "--ks",
            "4",
            "--strict",
        ],
        code=2,
    )
    assert "--strict" in strict.output and not (tmp_path / "p2.json").exists()


def test_attribute_bias_needs_explicit_groups_and_groups_queries(hub_files, hub_data, tmp_path):
    p = hub_files
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"g{i},{'male' if i % 2 else 'female'}\n" for i in range(300)))
    base = [
        "attribute-bias",
        "-Q",
        p["queries"],
        "-g",
        p["gallery"],
        "--labels",
        labels,
        "-r",
        p["reference"],
        "-a",
        "0.75",
        "-k",
        "16",
    ]
    assert "--group-a" in run(base, code=2).output
    groups = tmp_path / "groups.csv"
    groups.write_text("id,group\n" + "".join(f"q{i},occupation{i % 7}\n" for i in range(600)))
    doc = json.loads(
        run(
            base
            + [
                "--group-a",
                "male",
                "--group-b",
                "female",
                "--query-groups",
                groups,
                "-t",
                p["truth"],
                "--json",
                "--plot",
                tmp_path / "groups.png",
            ]
        ).stdout
    )
    assert (tmp_path / "groups.png").stat().st_size > 1000
    assert doc["n_groups"] == 7
    rec = doc["at"]["6"]["baseline"]
    assert len(rec["per_group"]) == 7
    assert rec["bias"] == pytest.approx(np.mean(list(rec["per_group"].values())))
    assert set(doc["precision_at"]) == {"1", "5"}


def test_truth_from_pairs_both_directions(tmp_path):
    rng = np.random.default_rng(0)
    for name, n, prefix in (("images", 4, "img"), ("captions", 8, "cap")):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["embeddings"] = rng.standard_normal((n, 4)).astype(np.float32)
            f.create_dataset(
                "ids", data=np.array([f"{prefix}{i}" for i in range(n)], dtype=object), dtype=h5py.string_dtype()
            )
    (tmp_path / "pairs.csv").write_text("image_id,caption_id\n" + "".join(f"img{i // 2},cap{i}\n" for i in range(8)))
    out = tmp_path / "truth"
    out.mkdir()
    run(
        [
            "truth-from-pairs",
            "--pairs",
            tmp_path / "pairs.csv",
            "--images",
            tmp_path / "images.h5",
            "--captions",
            tmp_path / "captions.h5",
            "-o",
            out,
        ]
    )
    t2i = np.load(out / "text_to_image_truth.npy")
    i2t = np.load(out / "image_to_text_truth.npy")
    assert t2i.tolist() == [[i, i // 2] for i in range(8)]
    assert sorted(i2t.tolist()) == sorted([[i // 2, i] for i in range(8)])
    (tmp_path / "bad.csv").write_text("image_id,caption_id\nimg9,cap0\n")
    res = run(
        [
            "truth-from-pairs",
            "--pairs",
            tmp_path / "bad.csv",
            "--images",
            tmp_path / "images.h5",
            "--captions",
            tmp_path / "captions.h5",
            "-o",
            tmp_path / "truth",
        ],
        code=2,
    )
    assert "img9" in res.output
