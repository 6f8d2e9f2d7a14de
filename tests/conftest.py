import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from nnn_cli.core.synthetic import make_hub_data


def pytest_configure(config):
    """`nnn embed --backend onnx|openvino` exports go to a cache of this session, never ~/.cache/nnn.

    Set here, before collection, so that test modules which copy ``os.environ`` at import time for
    their subprocesses carry it too."""
    if not os.environ.get("NNN_CACHE_DIR"):
        import tempfile

        config._nnn_export_cache = tempfile.mkdtemp(prefix="nnn-export-cache-")
        os.environ["NNN_CACHE_DIR"] = config._nnn_export_cache


def pytest_unconfigure(config):
    path = getattr(config, "_nnn_export_cache", None)
    if path:
        import shutil

        os.environ.pop("NNN_CACHE_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_data():
    """Small synthetic data with planted hubs (baseline R@1 24%, NNN at alpha 0.75, k 16: 39%)."""
    return make_hub_data(n_gallery=300, n_queries=600, n_reference=2000, dim=32, seed=1)


@pytest.fixture
def hub_files(tmp_path, hub_data):
    """The hub data written as HDF5 (with ids) and .npy files; returns a dict of paths."""
    import h5py

    paths = {}
    for name in ("gallery", "queries", "reference"):
        arr = getattr(hub_data, name)
        p = tmp_path / f"{name}.h5"
        with h5py.File(p, "w") as f:
            f["embeddings"] = arr
            f.create_dataset(
                "ids",
                data=np.array([f"{name[0]}{i}" for i in range(len(arr))], dtype=object),
                dtype=h5py.string_dtype(),
            )
        paths[name] = p
        np.save(tmp_path / f"{name}.npy", arr)
        paths[f"{name}_npy"] = tmp_path / f"{name}.npy"
    np.save(tmp_path / "truth.npy", hub_data.truth)
    paths["truth"] = tmp_path / "truth.npy"
    return paths
