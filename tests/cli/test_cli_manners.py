"""Issue 21: one set of manners across every command.

- every usage error (Click's own included) is ``Error: <what> (<option>)`` on one line, exit 2: a walker
  gives every option of every command a bad value;
- one grammar: --queries/--gallery/--reference everywhere (positional shorthands kept), one meaning per
  short option, one --device default, ``nnn info`` with several files, per-input parquet ids columns,
  /dev/fd/N and /dev/stdin read like pipes, null ids refused;
- the edge promises: tune --plot without matplotlib, --metric ip overflow, a params file with a huge k,
  ``-o -`` into a full disk, non-UTF-8 query text, a signal just after the output was renamed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from nnn_cli.cli.application import app
from nnn_cli.cli.options import DEVICE_DEFAULT

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"
NNN = [sys.executable, "-m", "nnn_cli"]
runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_error_line(res, code=2) -> str:
    """The command failed with ``code`` and wrote exactly one line, ``Error: ...``, to stderr."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == code, (res.exit_code, res.stderr, res.stdout[:300])
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in res.stderr
    return lines[0]


def clip_folder(root: Path, sizes=(5, 7), d=8, seed=0, null_at: int | None = None) -> Path:
    """A clip-retrieval output folder: embeddings/{img,text}_emb/*.npy and metadata/*.parquet."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    for sub in ("embeddings/img_emb", "embeddings/text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    start = 0
    for i, n in enumerate(sizes):
        base = rng.normal(size=(n, d))
        np.save(root / "embeddings" / "img_emb" / f"img_emb_{i}.npy", base.astype(np.float32))
        np.save(root / "embeddings" / "text_emb" / f"text_emb_{i}.npy", (base + 0.1 * rng.normal(size=(n, d))))
        paths = [f"img/{start + j:03d}.jpg" for j in range(n)]
        if null_at is not None and start <= null_at < start + n:
            paths[null_at - start] = None
        pq.write_table(
            pa.table({"caption": [f"caption {start + j}" for j in range(n)], "image_path": paths}),
            root / "metadata" / f"metadata_{i}.parquet",
        )
        start += n
    return root


# ---------------------------------------------------------------------------
# the walker: every command's every option with a bad value -> one line, exit 2
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    t = tmp_path_factory.mktemp("walk")
    np.save(t / "labels.npy", (np.arange(1000) % 3 - 1).astype(np.int64))
    with h5py.File(SAMPLE / "gallery.h5", "r") as f:
        ids = [x.decode() if isinstance(x, bytes) else str(x) for x in f["ids"][:20]]
    (t / "labels.csv").write_text(
        "id,label\n" + "".join(f"{i},{'man' if n % 2 else 'woman'}\n" for n, i in enumerate(ids))
    )
    (t / "items.jsonl").write_text('{"text": "a", "id": 1}\n{"text": "b", "id": 2}\n')
    (t / "pairs.csv").write_text("image_id,caption_id\nx,y\n")
    clip = clip_folder(t / "clip") if _has("pyarrow") else None
    np.save(t / "clip_truth.npy", np.arange(12))
    from nnn_cli import jobs

    jobs.bias(SAMPLE / "gallery.h5", SAMPLE / "reference.h5", t / "export_bias.h5", alpha=0.5, k=4)
    if clip is not None:
        img, txt = clip / "embeddings" / "img_emb", clip / "embeddings" / "text_emb"
        jobs.bias(img, txt, t / "clip_bias.h5", alpha=0.5, k=2)
    return t, clip


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _base(command: str, t: Path) -> list[str]:
    s = SAMPLE
    return {
        "bias": [s / "gallery.h5", "-r", s / "reference.h5", "-a", "0.5", "-k", "4", "-o", t / "b.h5"],
        "search": [s / "queries.h5", "-g", s / "gallery.h5", "-o", t / "r.h5"],
        "eval": ["-Q", s / "queries.h5", "-g", s / "gallery.h5", "-t", s / "truth.npy", "-r", s / "reference.h5"]
        + ["-a", "0.5", "-k", "4"],
        "attribute-bias": ["-Q", s / "queries.h5", "-g", s / "gallery.h5", "-l", t / "labels.npy"]
        + ["-r", s / "reference.h5", "-a", "0.5", "-k", "4"],
        "embed": [t / "items.jsonl", "-o", t / "e.h5"],
        "info": [s / "gallery.h5"],
        "query": ["a text", "-g", s / "gallery.h5"],
        "tune": ["-g", s / "tune_gallery.h5", "-r", s / "reference.h5", "-o", t / "p.json", "-Q", s / "tune_queries.h5"]
        + ["-t", s / "tune_truth.npy", "--alphas", "0.5", "--ks", "4"],
        "export": [s / "gallery.h5", "-b", t / "export_bias.h5", "--to", f"lancedb:{t / 'store'}"],
        "truth-from-pairs": ["--pairs", t / "pairs.csv", "--images", s / "gallery.h5", "--captions", s / "queries.h5"]
        + ["-o", t],
    }[command]


# Options whose bad value only shows in some setting: (the base arguments for that setting).
def _context(command: str, option: str, t: Path, clip: Path | None) -> list | None:
    if option in ("--ids-column", "--gallery-ids-column") and command in ("bias", "search", "eval", "export"):
        if clip is None:
            pytest.skip("pyarrow is not installed")
        img, txt = clip / "embeddings" / "img_emb", clip / "embeddings" / "text_emb"
        return {
            "bias": [img, "-r", txt, "-a", "0.5", "-k", "2", "-o", t / "cb.h5"],
            "search": [txt, "-g", img, "-o", t / "cr.h5"],
            "eval": ["-Q", txt, "-g", img, "-t", t / "clip_truth.npy", "--methods", "baseline"],
            "export": [img, "-b", t / "clip_bias.h5", "--to", f"lancedb:{t / 'clip_store'}"],
        }[command]
    if command == "attribute-bias" and option in ("--group-a", "--group-b"):
        other = "--group-b" if option == "--group-a" else "--group-a"
        return _base(command, t)[:4] + ["-l", t / "labels.csv", other, "man"] + _base(command, t)[6:]
    if command == "info" and option in ("--table", "--store-option"):  # a store's table, by URI
        return [f"lancedb:{t / 'store'}"] + (["--table", "items"] if option == "--store-option" else [])
    if command == "tune" and option == "--method-grid":
        return _base(command, t) + ["--method", "dn"]
    return None


STRING_BAD = {  # free-text options: a value each refuses; paths get a file that does not exist
    "--index": "bogus-index",
    "--memory-budget": "lots",
    "--engine": "bogus",
    "--storage-option": "novalue",
    "--alphas": "x",
    "--ks": "x",
    "--n": "x",
    "--precision-n": "x",
    "--methods": "bogus",
    "--method": "bogus",
    "--method-grid": "bogus",
    "--db-dense": "bogus",
    "--input-format": "bogus",
    "--text-column": "nope",
    "--id-column": "nope",
    "--ids-column": "nope",
    "--gallery-ids-column": "nope",
    "--queries-ids-column": "nope",
    "--reference-ids-column": "nope",
    "--group-a": "nope",
    "--group-b": "nope",
}
MISSING = "/nonexistent/nnn-bad-value"


def bad_values(param) -> list[str | None]:
    """Bad values for one option by its type (None: a value given to a flag)."""
    desc = param.type_descriptor
    low = getattr(desc.parameter_info, "min", None)
    if getattr(param, "is_flag", False):
        return [None]
    if desc.is_choice:
        return ["bogus"]
    if desc.annotation is int:
        return ["abc"] + ([str(low - 1)] if low is not None else [])
    if desc.annotation is float:
        return ["abc", "nan"] + ([str(low - 1)] if low is not None else [])
    long = [o for o in param.opts if o.startswith("--")][0]
    return [STRING_BAD.get(long, MISSING)]


def _cases():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            long = [o for o in param.opts if o.startswith("--")][0]
            for value in bad_values(param):
                yield pytest.param(name, long, value, id=f"{name} {long} {value}")


@pytest.mark.parametrize("command, option, value", list(_cases()))
def test_every_option_with_a_bad_value_is_one_line_and_exit_2(walk, command, option, value):
    t, clip = walk
    base = _context(command, option, t, clip) or _base(command, t)
    given = [f"{option}=bogus"] if value is None else [option, value]
    res = run(command, *base, *given)
    line = one_error_line(res)
    named = [option, option.lstrip("-")] + ([value] if value else [])
    assert any(n in line for n in named), line


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["search", "q.h5", "-g", "g.h5", "-o", "-", "--top-k", "0"], None, "(--top-k)"),
        (["tune", "-g", "g", "-r", "r", "-o", "p.json", "--objective", "R@3"], None, "(--objective)"),
        (["eval", "-Q", "q", "-g", "g", "-t", "t", "--bootstrap", "-1"], None, "(--bootstrap)"),
        (["embed", "x.txt", "-o", "x.h5", "--batch-size", "0"], None, "(--batch-size)"),
        (["bias", "g.h5", "-r", "r.h5"], {"NNN_THREADS": "abc"}, "(NNN_THREADS for --threads)"),
        (["bias", "g.h5", "-r", "r.h5"], {"NNN_BLOCK_SIZE": "0"}, "(NNN_BLOCK_SIZE for --block-size)"),
        (["bias", "g.h5", "-r", "r.h5", "--wait", "-1"], None, "(--wait)"),
        (["bias", "g.h5", "-r", "r.h5", "--wait", "nan"], None, "(--wait)"),
        (["bias", "g.h5", "-r", "r.h5"], {"NNN_WAIT": "abc"}, "(NNN_WAIT for --wait)"),
        (["bias", "g.h5", "-r", "r.h5", "--alpha", "nan"], None, "(--alpha)"),
        (["query", "-g", "g.h5"], None, "missing argument (TEXT...)"),
        (["search", "q.h5", "-g", "g.h5", "-o", "-", "--bogus"], None, "no such option"),
        (["bias", "--galery", "g.h5"], None, "did you mean --gallery"),
        (["info"], None, "missing argument (FILE...)"),
        (["search", "q.h5", "-o", "-"], None, "missing option (--gallery)"),
        (["bias", "g.h5", "extra.h5"], None, "extra.h5"),
    ],
)
def test_the_issues_usage_errors_are_one_line(args, env, needle):
    assert needle in one_error_line(run(*args, env=env))


def test_usage_errors_in_a_real_process_are_one_line():
    out = subprocess.run([*NNN, "search", "q.h5", "-g", "g.h5", "-o", "-", "-n", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == ["Error: input should be greater than or equal to 1 (--top-k)"]


def test_no_arguments_still_shows_the_help():
    out = subprocess.run(NNN, capture_output=True, text=True)
    assert "Usage" in out.stdout + out.stderr and "bias" in out.stdout + out.stderr


# ---------------------------------------------------------------------------
# one grammar
# ---------------------------------------------------------------------------
def _options():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name == "option":
                yield name, param


def test_short_options_mean_one_thing_everywhere():
    meaning: dict[str, set[str]] = {}
    for _, param in _options():
        long = [o for o in param.opts if o.startswith("--")][0]
        for short in (o for o in param.opts if not o.startswith("--")):
            meaning.setdefault(short, set()).add(long)
    assert {s: m for s, m in meaning.items() if len(m) > 1} == {}
    assert meaning["-m"] == {"--model"}


def test_commands_carry_real_annotations_not_strings():
    """Typer resolves string annotations (``from __future__ import annotations``) with a compile and an eval
    per parameter of every command at each start (measured: 50-70 ms of a 0.5 s tiny `nnn bias`), so the
    command modules keep real ones."""
    import importlib
    import inspect

    from nnn_cli.cli.application import COMMANDS

    for name, (module, function) in COMMANDS.items():
        command = getattr(importlib.import_module(f"nnn_cli.cli.commands.{module}"), function)
        annotations = inspect.get_annotations(command)
        assert annotations, name
        assert [p for p, a in annotations.items() if isinstance(a, str)] == [], name


def test_one_device_default_for_every_command():
    defaults = {name: param.default for name, param in _options() if param.name == "device"}
    assert set(defaults) >= {"bias", "search", "embed", "query"}
    assert {getattr(d, "value", d) for d in defaults.values()} == {DEVICE_DEFAULT.value} == {"auto"}


def test_every_command_taking_inputs_spells_them_the_same():
    spelled = {name: set(param.opts) for name, param in _options() if param.name in ("gallery", "gallery_opt")}
    assert all(opts == {"--gallery", "-g"} for opts in spelled.values()), spelled
    queries = {name for name, param in _options() if "--queries" in param.opts}
    assert queries >= {"search", "eval", "tune", "attribute-bias"}
    reference = {name for name, param in _options() if "--reference" in param.opts}
    assert reference >= {"bias", "eval", "tune", "attribute-bias"}


def test_bias_and_search_take_their_input_as_an_option_or_positionally(tmp_path):
    s = SAMPLE
    common = ["-r", s / "reference.h5", "-a", "0.5", "-k", "4", "-q"]
    assert run("bias", s / "gallery.h5", *common, "-o", tmp_path / "a.h5").exit_code == 0
    assert run("bias", "--gallery", s / "gallery.h5", *common, "-o", tmp_path / "b.h5").exit_code == 0
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert np.array_equal(a["bias"][()], b["bias"][()])
    one = run("search", s / "queries.h5", "-g", s / "gallery.h5", "-n", "3", "-o", "-")
    two = run("search", "--queries", s / "queries.h5", "-g", s / "gallery.h5", "-n", "3", "-o", "-")
    assert one.exit_code == two.exit_code == 0 and one.stdout == two.stdout and one.stdout
    line = one_error_line(
        run("search", s / "queries.h5", "--queries", s / "gallery.h5", "-g", s / "gallery.h5", "-o", "-")
    )
    assert "(--queries)" in line and "given twice" in line
    assert "missing option (--gallery)" in one_error_line(run("bias", "-r", s / "reference.h5", "-a", "1", "-k", "1"))


def test_info_takes_several_files():
    res = run("info", SAMPLE / "gallery.h5", SAMPLE / "truth.npy", "--json")
    assert res.exit_code == 0, res.stderr
    docs = [json.loads(d) for d in res.stdout.replace("}\n{", "}\n\x00{").split("\x00")]
    assert [Path(d["path"]).name for d in docs] == ["gallery.h5", "truth.npy"]
    text = run("info", SAMPLE / "gallery.h5", SAMPLE / "queries.h5")
    assert text.exit_code == 0 and "gallery.h5" in text.stdout and "queries.h5" in text.stdout
    res = run("info", SAMPLE / "gallery.h5", "/nonexistent/x.h5")
    assert "/nonexistent/x.h5" in one_error_line(res) and res.stdout == ""  # nothing shown unless all can be


def test_ids_columns_per_input(tmp_path):
    clip = clip_folder(tmp_path / "clip")
    img = clip / "embeddings" / "img_emb"
    np.save(tmp_path / "ref.npy", np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32))
    np.save(tmp_path / "q.npy", np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32))
    # a clip-retrieval gallery with a plain reference: --ids-column applies where there is parquet metadata
    res = run(
        "bias",
        img,
        "-r",
        tmp_path / "ref.npy",
        "-a",
        "1",
        "-k",
        "2",
        "--ids-column",
        "caption",
        "-o",
        tmp_path / "b.h5",
    )
    assert res.exit_code == 0, res.stderr
    for flag in ("--ids-column", "--gallery-ids-column"):
        res = run("search", tmp_path / "q.npy", "-g", img, flag, "caption", "-n", "1", "-o", "-")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout.splitlines()[0])["results"][0]["id"].startswith("caption ")
    res = run("search", tmp_path / "q.npy", "-g", img, "-n", "1", "-o", "-")  # default column: image_path
    assert json.loads(res.stdout.splitlines()[0])["results"][0]["id"].startswith("img/")
    # a per-input column for an input without parquet metadata is refused, naming that option
    line = one_error_line(run("search", tmp_path / "q.npy", "-g", img, "--queries-ids-column", "caption", "-o", "-"))
    assert "(--queries-ids-column)" in line and "q.npy" in line
    line = one_error_line(
        run(
            "bias",
            img,
            "-r",
            tmp_path / "ref.npy",
            "-a",
            "1",
            "-k",
            "2",
            "--reference-ids-column",
            "x",
            "-o",
            tmp_path / "c.h5",
        )
    )
    assert "(--reference-ids-column)" in line
    assert not (tmp_path / "c.h5").exists()


def test_the_typed_requests_carry_the_ids_columns_per_input(tmp_path):
    from nnn_cli import jobs

    clip = clip_folder(tmp_path / "clip")
    img = clip / "embeddings" / "img_emb"
    np.save(tmp_path / "q.npy", np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32))
    cols = jobs.IdsColumns(gallery="caption")
    req = jobs.SearchRequest.build(tmp_path / "q.npy", img, "-", top_k=1, ids_columns=cols)
    assert (
        req.ids_columns == cols and jobs.SearchRequest.build(tmp_path / "q.npy", img, "-").ids_columns.gallery is None
    )
    # the older spelling: one string is --ids-column, for every input with parquet metadata
    assert jobs.SearchRequest.build(tmp_path / "q.npy", img, "-", ids_column="caption").ids_columns.default == "caption"
    stream = io.StringIO()
    jobs.run_search(req, stream=stream)
    assert json.loads(stream.getvalue().splitlines()[0])["results"][0]["id"].startswith("caption ")
    req = jobs.BiasRequest.build(
        img, img, tmp_path / "b.h5", alpha=1.0, k=2, ids_columns=jobs.IdsColumns(gallery="caption")
    )
    assert req.ids_columns.gallery == "caption" and req.ids_columns.reference is None
    jobs.run_bias(req)
    with h5py.File(tmp_path / "b.h5") as f:
        assert f["ids"][0].decode().startswith("caption ")
    with pytest.raises(Exception, match="--queries-ids-column"):
        jobs.run_search(
            jobs.SearchRequest.build(tmp_path / "q.npy", img, "-", ids_columns=jobs.IdsColumns(queries="x")),
            stream=stream,
        )


def test_null_ids_in_clip_retrieval_parquet_are_refused(tmp_path):
    clip = clip_folder(tmp_path / "clip", null_at=6)
    np.save(tmp_path / "q.npy", np.ones((2, 8), np.float32))
    res = run("search", tmp_path / "q.npy", "-g", clip / "embeddings" / "img_emb", "-o", tmp_path / "r.h5")
    line = one_error_line(res)
    assert "metadata_1.parquet" in line and "'image_path'" in line and "null" in line and "row 1" in line
    assert not (tmp_path / "r.h5").exists()


def _search_lines(source: str, cwd: Path, **kw) -> str:
    out = subprocess.run(
        ["bash", "-c", f"{' '.join(NNN)} search {source} -g {SAMPLE / 'gallery.h5'} -n 2 -o -"],
        capture_output=True,
        text=True,
        cwd=cwd,
        **kw,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dev_fd_dev_stdin_fifo_and_process_substitution_read_like_pipes(tmp_path):
    q = SAMPLE / "queries.h5"
    expected = _search_lines(str(q), tmp_path)
    assert expected.count("\n") == 1000
    assert _search_lines(f"/dev/fd/3 3<{q}", tmp_path) == expected
    assert _search_lines(f"<(cat {q})", tmp_path) == expected
    assert _search_lines(f"/dev/stdin < {q}", tmp_path) == expected
    fifo = tmp_path / "q.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as w:
            w.write(q.read_bytes())

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert _search_lines(str(fifo), tmp_path, timeout=120) == expected
    finally:
        writer.join(timeout=60)
    bad = subprocess.run(
        ["bash", "-c", f"{' '.join(NNN)} search <(echo garbage) -g {SAMPLE / 'gallery.h5'} -o -"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith("Error: /dev/fd/") and "not .npy data" in bad.stderr


# ---------------------------------------------------------------------------
# the edge promises
# ---------------------------------------------------------------------------
def test_tune_plot_without_matplotlib_keeps_the_existing_params(tmp_path, monkeypatch):
    s = SAMPLE
    params = tmp_path / "params.json"
    params.write_text('{"alpha": 0.5, "k": 4}\n')
    before = params.read_bytes()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    res = run(
        "tune", "-g", s / "tune_gallery.h5", "-r", s / "reference.h5", "-Q", s / "tune_queries.h5",
        "-t", s / "tune_truth.npy", "--alphas", "0.5,1", "--ks", "4,8", "-o", params, "--plot", tmp_path / "grid.png",
    )  # fmt: skip
    line = one_error_line(res)
    assert "matplotlib" in line and ".venv/bin/pip install -e '.[plots]'" in line
    assert params.read_bytes() == before and not (tmp_path / "grid.png").exists()


def test_metric_ip_overflow_is_one_line_without_numpy_warnings(tmp_path):
    np.save(tmp_path / "big.npy", np.full((10, 4), 1e30, np.float32))
    out = subprocess.run(
        [
            *NNN,
            "bias",
            tmp_path / "big.npy",
            "-r",
            tmp_path / "big.npy",
            "-a",
            "0.5",
            "-k",
            "2",
            "--metric",
            "ip",
            "-o",
            tmp_path / "b.h5",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.splitlines()) == 1 and "overflow float32" in out.stderr and "RuntimeWarning" not in out.stderr
    assert not (tmp_path / "b.h5").exists()


def test_a_huge_k_in_a_params_file_names_the_file_and_the_reference(tmp_path):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"alpha": 0.5, "k": 100_000_000}))
    line = one_error_line(
        run("bias", SAMPLE / "gallery.h5", "-r", SAMPLE / "reference.h5", "--params", params, "-o", tmp_path / "b.h5")
    )
    assert str(params) in line and "reference.h5" in line and "k=100000000" in line and "6000 rows" in line
    line = one_error_line(run("eval", "-Q", SAMPLE / "queries.h5", "-g", SAMPLE / "gallery.h5", "-t", SAMPLE / "truth.npy",
                              "-r", SAMPLE / "reference.h5", "-a", "0.5", "-k", "7000"))  # fmt: skip
    assert "--k 7000" in line and "reference.h5" in line
    assert not (tmp_path / "b.h5").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    "args, name",
    [
        (["search", SAMPLE / "queries.h5", "-g", SAMPLE / "gallery.h5", "-o", "-"], "<stdout> (-o -)"),
        (["info", SAMPLE / "gallery.h5", "--json"], "<stdout>"),
        (["info", SAMPLE / "gallery.h5"], "<stdout>"),
    ],
)
def test_a_full_disk_under_stdout_is_exit_2_naming_the_output(args, name):
    with open("/dev/full", "w") as full:
        out = subprocess.run([*NNN, *map(str, args)], stdout=full, stderr=subprocess.PIPE, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"Error: disk full writing {name}"]


def test_query_text_that_is_not_utf8_is_one_line():
    out = subprocess.run([*NNN, "query", b"\xff\xfe", "-g", str(SAMPLE / "gallery.h5")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["Error: query text 1 is not valid UTF-8 text (TEXT)"]
    assert "empty" in one_error_line(run("query", "fine", "  ", "-g", SAMPLE / "gallery.h5"))


LATE_SIGNAL = """
import os, signal, sys, time
import typer
import nnn_cli.cli.application as application
from nnn_cli.cli.errors import NNNGroup, handle_errors

app = typer.Typer(cls=NNNGroup, add_completion=False)


@app.command()
@handle_errors
def late(ctx: typer.Context):
    # the command has returned when the context closes: the signal lands outside handle_errors
    ctx.call_on_close(lambda: (os.kill(os.getpid(), signal.SIG{name}), time.sleep(5)))


@app.command()
def other():
    pass


application.run = app
sys.argv = ["nnn", "late"]
from nnn_cli.cli import main

main()
"""


@pytest.mark.parametrize("name, code, what", [("TERM", 143, "Terminated"), ("INT", 130, "Interrupted")])
def test_a_signal_while_the_context_closes_gets_its_line_and_code(name, code, what):
    """Typer turns a KeyboardInterrupt raised outside the command (here while its context closes) into a
    silent exit 130; the signal's own line and code come back (CI once saw a bare 130 after SIGTERM)."""
    proc = subprocess.run(
        [sys.executable, "-c", LATE_SIGNAL.replace("{name}", name)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert (proc.returncode, proc.stderr) == (code, f"{what}; no output was written.\n")


def test_a_signal_just_after_the_rename_still_gets_its_line(tmp_path):
    """SIGTERM sent the moment the output appears: never a silent death by the signal; 143 says the
    file is complete (and it is), 0 means the process had already ended."""
    out = tmp_path / "bias.h5"
    cmd = [*NNN, "bias", SAMPLE / "gallery.h5", "-r", SAMPLE / "reference.h5", "-a", "0.5", "-k", "4", "-q", "-o", out]
    outcomes = []
    for _ in range(12):
        if out.exists():
            out.unlink()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != -signal.SIGTERM, "killed by the signal with no line"
        assert out.exists()  # the rename had happened
        if proc.returncode == 143:
            assert err.splitlines() == [f"Terminated; {out} was already written in full."]
            with h5py.File(out) as f:
                assert f["bias"].shape == (1000,)
        else:
            assert proc.returncode == 0 and err == "", err
        outcomes.append(proc.returncode)
    assert 143 in outcomes, outcomes  # the window was hit at least once


# ---------------------------------------------------------------------------
# set-up: scripts/pick_torch.py (make setup-embed / make test)
# ---------------------------------------------------------------------------
def _pick_torch():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pick_torch", ROOT / "scripts" / "pick_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pick_torch_asks_for_the_cpu_build_and_spots_cuda_packages():
    pick = _pick_torch()
    assert pick.cpu_spec("torch==2.13.0") == "torch==2.13.0+cpu"
    assert pick.cpu_spec(" torch == 2.4.1 ") == "torch==2.4.1+cpu"
    assert pick.cpu_spec("torch>=2.1") is None
    report = {
        "install": [
            {"metadata": {"name": "torch", "version": "2.13.0"}},
            {"metadata": {"name": "nvidia-cublas-cu12", "version": "12.8"}},
            {"metadata": {"name": "triton", "version": "3.5"}},
            {"metadata": {"name": "sympy", "version": "1.14"}},
        ]
    }
    assert pick.cuda_packages(report) == ["nvidia-cublas-cu12", "triton"]
    assert pick.chosen_torch(report) == "2.13.0"
    assert pick.cuda_packages({"install": [{"metadata": {"name": "torch", "version": "2.13.0+cpu"}}]}) == []


def test_pick_torch_with_pip_torch_args_says_what_it_runs(tmp_path):
    env = {**os.environ, "PIP_TORCH_ARGS": "--index-url file:///nowhere"}
    out = subprocess.run(
        [sys.executable, ROOT / "scripts" / "pick_torch.py", "--dry-run", "--spec", "torch==2.13.0"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert "PIP_TORCH_ARGS given" in out.stdout
    assert "pip install --index-url file:///nowhere torch==2.13.0 (dry run: not run)" in out.stdout
