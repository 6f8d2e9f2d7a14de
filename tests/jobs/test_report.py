"""Plots, the HTML report (rendered in headless Chromium when installed) and attribute bias."""

import json
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli.application import app
from nnn_cli.core.attribute import attribute_bias, precision_at
from nnn_cli.core.truth import Truth
from nnn_cli.data.labels import read_labels
from nnn_cli.errors import InputError, ParameterError

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    data = open(path, "rb").read(24)
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_functions_write_pngs(tmp_path):
    from nnn_cli.report.plots import plot_hubness, plot_recall_bars, plot_tune_grid

    rng = np.random.default_rng(0)
    before = rng.poisson(1.0, 200)
    before[:3] = [40, 25, 18]
    after = rng.poisson(1.0, 200)
    p = plot_hubness({"baseline": before, "NNN": after}, tmp_path / "h.png")
    w, h = png_size(p)
    assert w > 300 and h > 200
    points = [{"alpha": a, "k": k, "R@1": 30 + a * 10 + np.log2(k)} for a in (0.25, 0.5, 0.75) for k in (1, 2, 4, 8)]
    alphas, ks = [0.25, 0.5, 0.75], [1, 2, 4, 8]
    values = np.array([[p["R@1"] for p in points if p["alpha"] == a] for a in alphas])
    assert values.shape == (3, 4) and not np.isnan(values).any()
    png_size(plot_tune_grid(alphas, ks, values, tmp_path / "grid.png", best=(0.75, 8)))
    png_size(
        plot_recall_bars(
            {"Baseline": {"R@1": 30.0, "R@1_ci": [28, 32]}, "NNN": {"R@1": 40.0, "R@1_ci": [38, 42]}},
            tmp_path / "bars.png",
        )
    )
    with pytest.raises(ParameterError):
        plot_tune_grid([0.5], [1, 2], [[1.0]], tmp_path / "bad.png")


def run_eval_with_report(hub_files, tmp_path):
    report = tmp_path / "report.html"
    plots = tmp_path / "pics"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--queries",
            str(hub_files["queries"]),
            "--gallery",
            str(hub_files["gallery"]),
            "--truth",
            str(hub_files["truth"]),
            "--reference",
            str(hub_files["reference"]),
            "--alpha",
            "0.75",
            "--k",
            "16",
            "--methods",
            "baseline,nnn,dn,qbnorm,dbnorm",
            "--bootstrap",
            "30",
            "--plots",
            str(plots),
            "--report",
            str(report),
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), report, plots


def test_eval_plots_and_report(hub_files, tmp_path):
    out, report, plots = run_eval_with_report(hub_files, tmp_path)
    for name in ("hubness.png", "hubness_all.png", "gain.png"):
        png_size(plots / name)
    assert len(out["pictures"]) == 3
    text = report.read_text()
    assert text.count("data:image/png;base64,") == 3
    assert 'id="recall"' in text and 'id="hubness"' in text and "DBNorm (DualIS)" in text
    assert 'src="http' not in text and "<script src" not in text  # self-contained


def test_report_renders_in_chromium(hub_files, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    _, report, _ = run_eval_with_report(hub_files, tmp_path)
    # A copy of the page with a small script that records each image's decoded width into the DOM.
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load',function(){var w=[];"
        "document.querySelectorAll('img').forEach(function(i){w.push(i.naturalWidth)});"
        "var t=[];document.querySelectorAll('table').forEach(function(x){t.push(Math.ceil(x.getBoundingClientRect().right))});"
        "var p=document.createElement('p');p.id='probe';p.textContent='widths:'+w.join(',')"
        "+';page:'+document.documentElement.scrollWidth+';tables:'+t.join(',')+';';"
        "document.body.appendChild(p);});</script>"
    )
    probe.write_text(report.read_text().replace("</body>", script + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=3000",
    ]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [chromium, *flags, f"--user-data-dir={profile}", "--window-size=1280,1400", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'id="recall"' in html and 'id="hubness"' in html
    assert html.count("<tr>") >= 8
    widths = re.search(r'id="probe">widths:([0-9,]*)', html)
    assert widths, "probe script did not run"
    values = [int(w) for w in widths.group(1).split(",") if w]
    assert len(values) == 3 and all(w > 100 for w in values), values
    # the tables fit a 1280 px page: nothing runs off to the right, the page needs no horizontal scroll
    page = re.search(r"page:([0-9]+);tables:([0-9,]*);", html)
    assert page, "probe script did not measure the page"
    rights = [int(x) for x in page.group(2).split(",") if x]
    assert len(rights) >= 2 and max(rights) <= 1280 and int(page.group(1)) <= 1280, (page.group(0), rights)
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run(
            [
                chromium,
                *flags,
                f"--user-data-dir={profile}",
                "--window-size=1100,1400",
                f"--screenshot={shot}",
                report.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    assert png_size(shot) == (1100, 1400)


def test_attribute_bias_hand_computed():
    labels = np.array([1, 0, 1, -1, 0], dtype=np.int8)  # a, b, a, neither, b
    topk = np.array(
        [
            [0, 2, 3, 1],  # n=2: a,a -> +1 ; n=4: a,a,-,b -> (2-1)/4
            [1, 4, 0, 2],
        ]
    )  # n=2: b,b -> -1 ; n=4: b,b,a,a -> 0
    assert attribute_bias(topk, labels, 2) == pytest.approx(0.0)
    assert attribute_bias(topk, labels, 4) == pytest.approx((0.25 + 0.0) / 2)
    assert attribute_bias(topk[:1], labels, 2) == pytest.approx(1.0)
    truth = Truth.from_array(np.array([[0, 2], [0, 1], [1, 3]]), 2, 5)
    # query 0: correct {2, 1}: top2 has 2 -> 1/2; query 1: correct {3}: top2 none -> 0
    assert precision_at(topk, truth, 2) == pytest.approx(0.25)
    # top4: q0 has 2 and 1 -> 2/4; q1 has none -> 0
    assert precision_at(topk, truth, 4) == pytest.approx(0.25)


def test_read_labels(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\ng0,man\ng1,woman\ng3,man\n")
    ids = np.array(["g0", "g1", "g2", "g3"], dtype=object)
    lab, a, b = read_labels(csv, 4, ids)
    assert (a, b) == ("man", "woman") and lab.tolist() == [1, 0, -1, 1]
    lab, a, b = read_labels(csv, 4, ids, a="woman", b="man")
    assert lab.tolist() == [0, 1, -1, 0]
    with pytest.raises(InputError):
        read_labels(csv, 4, np.array(["x0", "x1", "x2", "x3"], dtype=object))
    np.save(tmp_path / "bad.npy", np.array([1, 2, 0, 0]))
    with pytest.raises(InputError):
        read_labels(tmp_path / "bad.npy", 4)


def test_attribute_bias_cli(hub_files, hub_data, tmp_path):
    # planted hubs labelled a, everything else b: hubs crowd the top lists, NNN should reduce that share
    labels = np.zeros(len(hub_data.gallery), dtype=np.int64)
    labels[hub_data.hubs] = 1
    np.save(tmp_path / "labels.npy", labels)
    res = CliRunner().invoke(
        app,
        [
            "attribute-bias",
            "--queries",
            str(hub_files["queries"]),
            "--gallery",
            str(hub_files["gallery"]),
            "--labels",
            str(tmp_path / "labels.npy"),
            "--reference",
            str(hub_files["reference"]),
            "--alpha",
            "0.75",
            "--k",
            "16",
            "--truth",
            str(hub_files["truth"]),
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out["at"]) == {"6", "10"}
    for rec in out["at"].values():
        assert rec["nnn"]["bias"] < rec["baseline"]["bias"]
        assert rec["nnn"]["precision"] > rec["baseline"]["precision"]
    bad = CliRunner().invoke(
        app,
        [
            "attribute-bias",
            "--queries",
            str(hub_files["queries"]),
            "--gallery",
            str(hub_files["gallery"]),
            "--labels",
            str(tmp_path / "missing.npy"),
            "--reference",
            str(hub_files["reference"]),
            "--alpha",
            "0.75",
            "--k",
            "16",
        ],
    )
    assert bad.exit_code == 2 and "missing.npy" in bad.output


def test_tune_plot_heatmap(hub_files, tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "tune",
            "-Q",
            str(hub_files["queries"]),
            "-g",
            str(hub_files["gallery"]),
            "-t",
            str(hub_files["truth"]),
            "-r",
            str(hub_files["reference"]),
            "-o",
            str(tmp_path / "p.json"),
            "--alphas",
            "0.5,0.75",
            "--ks",
            "4,16",
            "--plot",
            str(tmp_path / "grid.png"),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    w, h = png_size(tmp_path / "grid.png")
    assert w > 200 and h > 150
