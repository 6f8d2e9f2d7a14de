"""faiss and torch each bring an OpenMP runtime; loading both in one process must not crash or hang.

`nnn embed` (torch) and the core commands (faiss) can meet in one Python process (a notebook, a
pipeline script).  Each test runs a fresh interpreter with a timeout, imports the two in one
order, and does real multi-threaded work with each, interleaved, checking the answers agree.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")

WORK = textwrap.dedent("""
    import numpy as np
    {imports}
    faiss.omp_set_num_threads(2)
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 48)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:400] + 0.01 * rng.standard_normal((400, 48)).astype(np.float32)

    index = faiss.IndexFlatIP(48)
    index.add(x)
    _, faiss_top = index.search(q, 5)

    t = torch.from_numpy(x)
    torch_top = torch.topk(torch.from_numpy(q) @ t.T, 5, dim=1).indices.numpy()
    conv = torch.nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        y = conv(torch.randn(16, 3, 32, 32))
    assert y.shape == (16, 8, 30, 30)

    _, faiss_again = index.search(q, 5)  # faiss after torch's thread pool is up
    assert (faiss_top[:, 0] == np.arange(400)).all()
    assert (faiss_top == torch_top).mean() > 0.99
    assert (faiss_again == faiss_top).all()
    print("ok")
""")


@pytest.mark.parametrize(
    "imports", ["import faiss\nimport torch", "import torch\nimport faiss"], ids=["faiss-first", "torch-first"]
)
def test_faiss_and_torch_in_one_process(imports):
    code = WORK.format(imports=imports)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: faiss + torch ({imports.splitlines()[0]} first) did not finish in 180 s")
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip().endswith("ok")
