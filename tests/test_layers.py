"""The architecture as tests: import contracts hold, no import cycles, and every job validates
its outputs before reading any input in full (exit 2, nothing left behind)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli import app
from nnn_cli.data.sources import EmbeddingSource

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT, "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(cwd), "PATH": str(Path(sys.executable).parent)},
    )


@pytest.fixture(scope="module")
def linter():
    if not Path(LINT).exists():
        pytest.skip("import-linter is not installed (pip install '.[test]')")
    return LINT


def test_import_contracts_hold(linter):
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 kept, 0 broken" in res.stdout


def test_a_layer_violation_or_cycle_is_caught(linter, tmp_path):
    """The contracts can fail: an import from core up into data, and a cycle inside data, are reported."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "nnn_cli", copy / "nnn_cli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    nnn = copy / "nnn_cli" / "core" / "nnn.py"
    nnn.write_text(nnn.read_text() + "\nfrom nnn_cli.data import h5  # noqa: E402,F401\n")
    h5 = copy / "nnn_cli" / "data" / "h5.py"
    h5.write_text(h5.read_text() + "\nfrom nnn_cli.data import biasfile  # noqa: E402,F401\n")
    res = lint_imports(copy)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "nnn_cli.core.nnn -> nnn_cli.data.h5" in res.stdout
    assert "No cycles inside a layer BROKEN" in res.stdout


def test_no_module_level_import_cycles():
    """Every module's imports of our own modules, eager or deferred (package ``__init__``s included), form a DAG
    (what scripts/import_graph.py counts)."""
    import grimp

    graph = grimp.build_graph("nnn_cli")
    modules = sorted(m for m in graph.modules if m.startswith("nnn_cli"))
    edges = {m: {n for n in graph.find_modules_directly_imported_by(m) if n.startswith("nnn_cli")} for m in modules}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in edges.get(m, ()):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m)


def _modules_after(code: str) -> set[str]:
    """Our modules loaded by ``code`` in a fresh interpreter (this checkout first on the path)."""
    probe = code + "\nimport sys; print('\\n'.join(m for m in sys.modules if m.startswith('nnn_cli')))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_a_command_imports_only_its_own_modules():
    """`nnn query` builds the application with its command alone and loads no other job; `nnn --help` has all."""
    setup = "from nnn_cli.cli.application import build_app, _requested\n"
    query = _modules_after(setup + "build_app(_requested(['nnn', 'query'])); from nnn_cli import jobs; jobs.query")
    assert {"nnn_cli.cli.commands.query", "nnn_cli.jobs.query"} <= query
    others = {f"nnn_cli.jobs.{j}" for j in ("attribute", "bias", "embed", "eval", "search", "tune")}
    assert not query & (others | {"nnn_cli.cli.commands.tune", "nnn_cli.report.html"})
    everything = _modules_after(setup + "build_app(_requested(['nnn', '--help']))")
    assert {f"nnn_cli.cli.commands.{c}" for c in ("attribute", "bias", "embed", "eval", "search", "tune")} <= everything


def test_jobs_load_on_first_use_and_stay_the_job_functions():
    import importlib

    from nnn_cli import jobs

    for name in ("bias", "query", "search", "tune", "embed", "info"):
        importlib.import_module(f"nnn_cli.jobs.{name}")  # binds the submodule on the package
        assert callable(getattr(jobs, name)) and getattr(jobs, name).__name__ == name
    assert jobs.BiasRequest.__module__ == "nnn_cli.jobs.bias"
    with pytest.raises(AttributeError):
        jobs.no_such_job  # noqa: B018


@pytest.fixture
def no_full_reads(monkeypatch):
    """Any full read of an embedding input fails the test."""

    def refuse(self, *a, **k):
        raise AssertionError(f"{self.name} was read before the outputs were checked")

    monkeypatch.setattr(EmbeddingSource, "read", refuse)
    monkeypatch.setattr(EmbeddingSource, "iter_blocks", refuse)
    monkeypatch.setattr(EmbeddingSource, "fingerprint", refuse)


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("g", 40), ("r", 60), ("q", 30)):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((n, 8)).astype(np.float32))
    np.save(tmp_path / "t.npy", np.arange(30) % 40)
    return tmp_path


def _bad_output_cases(p: Path):
    g, r, q, t = (str(p / n) for n in ("g.npy", "r.npy", "q.npy", "t.npy"))
    return [
        (["bias", g, "-r", r, "-a", "0.5", "-k", "4", "-o", str(p / "out.txt")], "must end in"),
        (["bias", g, "-r", r, "-a", "0.5", "-k", "4", "-o", g], "is also an input"),
        (["bias", g, "-r", r, "-a", "0.5", "-k", "4", "-o", str(p / "missing" / "b.h5")], "does not exist"),
        (["search", q, "-g", g, "-o", str(p / "res.txt")], "must end in"),
        (["search", q, "-g", g, "-o", q], "is also an input"),
        (
            [
                "tune",
                "-g",
                g,
                "-r",
                r,
                "-Q",
                q,
                "-t",
                t,
                "-o",
                str(p / "p.json"),
                "--plot",
                str(p / "missing" / "x.png"),
            ],
            "does not exist",
        ),
        (
            ["tune", "-g", g, "-r", r, "-Q", q, "-t", t, "-o", str(p / "p.json"), "--plot", str(p / "x.jpg")],
            "must end in",
        ),
        (["tune", "-g", g, "-r", r, "-Q", q, "-t", t, "-o", r], "is also an input"),
        (
            [
                "eval",
                "-Q",
                q,
                "-g",
                g,
                "-t",
                t,
                "-r",
                r,
                "-a",
                "0.5",
                "-k",
                "4",
                "--report",
                str(p / "missing" / "r.html"),
            ],
            "does not exist",
        ),
        (["eval", "-Q", q, "-g", g, "-t", t, "-r", r, "-a", "0.5", "-k", "4", "--report", g], "is also an input"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_outputs_fail_before_any_input_is_read(small, no_full_reads, case):
    args, message = _bad_output_cases(small)[case]
    before = sorted(x.name for x in small.rglob("*"))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert sorted(x.name for x in small.rglob("*")) == before, "an output or temporary file was left behind"


def test_python_jobs_give_the_shell_guarantees(small):
    """A bias file written through the library carries the same provenance as one from `nnn bias`."""
    from nnn_cli import jobs
    from nnn_cli.data.biasfile import read_bias
    from nnn_cli.errors import ParameterError

    out = small / "b.h5"
    result = jobs.bias(small / "g.npy", reference=small / "r.npy", output=out, alpha=0.5, k=4)
    assert result.output == out
    attrs = read_bias(out).attrs
    for key in ("alpha", "k", "metric", "nnn_version", "gallery_fingerprint", "reference_fingerprint"):
        assert key in attrs
    runner_out = small / "b_cli.h5"
    res = CliRunner().invoke(
        app, ["bias", str(small / "g.npy"), "-r", str(small / "r.npy"), "-a", "0.5", "-k", "4", "-o", str(runner_out)]
    )
    assert res.exit_code == 0, res.output
    assert np.array_equal(read_bias(out).bias, read_bias(runner_out).bias)
    with pytest.raises(ParameterError, match="is also an input"):
        jobs.bias(small / "g.npy", reference=small / "r.npy", output=small / "r.npy", alpha=0.5, k=4)
