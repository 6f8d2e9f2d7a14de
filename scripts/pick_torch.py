"""Install torch into the venv, the CPU-only build on a machine without a GPU, and say which was chosen.

Used by ``make setup-embed`` / ``make test`` (standard library only; runs with the venv's Python)::

    python scripts/pick_torch.py --spec torch==2.13.0 [--dry-run] [-- PIP OPTIONS...]

How it chooses, first that works:

1. ``PIP_TORCH_ARGS`` given (e.g. another index): pip with those options, as asked.
2. A GPU is visible (an NVIDIA driver with a device): the default build from the configured indexes.
3. No GPU: ``uv pip install --torch-backend cpu`` (uv knows PyTorch's CPU wheel index; uv is installed
   into the venv for this), unless that index is unreachable;
4. then pip with the CPU build's own version, ``torch==X.Y.Z+cpu``, from the configured indexes and
   find-links (a local wheel mirror, as on CI);
5. else the default build, with a loud note that it pulls NVIDIA packages.

Every pip candidate is first resolved with ``pip install --dry-run --report`` and refused when it would
pull ``nvidia-*`` or ``triton`` packages on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

CUDA_PACKAGES = re.compile(r"^(nvidia-|triton$|cuda-)", re.IGNORECASE)


def say(line: str) -> None:
    print(f"== torch: {line}", flush=True)


def gpu_visible() -> str | None:
    """Why we think a GPU is here (None: no GPU): a working nvidia-smi, or the driver's device list."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return f"NVIDIA driver lists {len(list(gpus.iterdir()))} GPU(s) in {gpus}"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode == 0 and "GPU" in out.stdout:
        return f"nvidia-smi lists: {out.stdout.strip().splitlines()[0]}"
    return None


def cpu_spec(spec: str) -> str | None:
    """``torch==2.13.0`` -> ``torch==2.13.0+cpu`` (PyTorch's CPU build's version); None for other specs."""
    m = re.fullmatch(r"\s*torch\s*==\s*([0-9][0-9A-Za-z.]*)\s*", spec)
    return f"torch=={m.group(1)}+cpu" if m else None


def cuda_packages(report: dict) -> list[str]:
    """Names of CUDA packages a ``pip install --report`` would install."""
    names = [item.get("metadata", {}).get("name", "") for item in report.get("install", [])]
    return sorted(n for n in names if CUDA_PACKAGES.match(n))


def chosen_torch(report: dict) -> str | None:
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        if meta.get("name", "").lower() == "torch":
            return meta.get("version")
    return None


def pip_report(python: str, args: list[str]) -> dict | None:
    """``pip install --dry-run --report`` of ``args``: the report, or None when it does not resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(path), *args]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0 or not path.exists():
            return None
        return json.loads(path.read_text())


def pip_install(python: str, args: list[str], dry_run: bool) -> None:
    cmd = [python, "-m", "pip", "install", *args]
    say("running " + " ".join(shlex.quote(c) for c in cmd) + (" (dry run: not run)" if dry_run else ""))
    if not dry_run:
        subprocess.run(cmd, check=True)


def try_uv(python: str, spec: str, dry_run: bool) -> bool:
    """uv's own CPU selection (``--torch-backend cpu``); False when uv or PyTorch's CPU index is unreachable."""
    have = subprocess.run([python, "-m", "uv", "--version"], capture_output=True, text=True)
    if have.returncode != 0:
        got = subprocess.run([python, "-m", "pip", "install", "--quiet", "uv"], capture_output=True, text=True)
        if got.returncode != 0:
            say("uv could not be installed; trying pip")
            return False
    base = [python, "-m", "uv", "pip", "install", "--python", python, "--torch-backend", "cpu"]
    try:
        check = subprocess.run([*base, "--dry-run", spec], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        say("uv's CPU index did not answer in 180 s; falling back to the configured indexes")
        return False
    text = check.stdout + check.stderr
    if check.returncode != 0:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = next((ln for ln in lines if ln.lower().startswith("error")), lines[-1] if lines else "no answer")
        say(f"uv --torch-backend cpu is unreachable here ({reason[:100]}); falling back to the configured indexes")
        return False
    if re.search(r"\+\s*(nvidia-|triton)", text):
        say("uv --torch-backend cpu would pull CUDA packages; falling back to the configured indexes")
        return False
    say(f"chose the CPU build through uv --torch-backend cpu ({spec})")
    if not dry_run:
        subprocess.run([*base, spec], check=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="torch==2.13.0")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--dry-run", action="store_true", help="say what would be installed, install nothing")
    parser.add_argument("--no-uv", action="store_true", help="skip the uv step (pip only)")
    parser.add_argument("pip_args", nargs="*", help="pip options for every pip call (after --)")
    ns = parser.parse_args(argv)
    torch_args = shlex.split(os.environ.get("PIP_TORCH_ARGS", ""))
    if torch_args:
        say(f"PIP_TORCH_ARGS given: installing {ns.spec} with {' '.join(torch_args)}")
        pip_install(ns.python, [*ns.pip_args, *torch_args, ns.spec], ns.dry_run)
        return 0
    gpu = gpu_visible()
    if gpu:
        say(f"GPU found ({gpu}): the default build of {ns.spec} (CUDA)")
        pip_install(ns.python, [*ns.pip_args, ns.spec], ns.dry_run)
        return 0
    say("no GPU found: looking for the CPU-only build")
    if not ns.no_uv and try_uv(ns.python, ns.spec, ns.dry_run):
        return 0
    candidates = [c for c in (cpu_spec(ns.spec), ns.spec) if c]
    for spec in candidates:
        report = pip_report(ns.python, [*ns.pip_args, spec])
        if report is None:
            say(f"{spec}: not found on the configured indexes")
            continue
        cuda = cuda_packages(report)
        if cuda:
            say(f"{spec} would pull {len(cuda)} CUDA packages ({', '.join(cuda[:3])}, ...): not on a CPU machine")
            continue
        say(f"chose torch {chosen_torch(report) or spec} from the configured indexes: no CUDA packages (pip --dry-run)")
        pip_install(ns.python, [*ns.pip_args, spec], ns.dry_run)
        return 0
    say(
        f"no CPU-only build of {ns.spec} is reachable: installing the default build, which pulls the NVIDIA "
        'packages (several GB). To avoid it: make test PIP_TORCH_ARGS="--index-url CPU_INDEX_URL" (see README)'
    )
    pip_install(ns.python, [*ns.pip_args, ns.spec], ns.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
