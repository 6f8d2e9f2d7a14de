"""Untrusted files: pickles are never loaded, HDF5 files cannot make us read other files, image walks stay inside."""

import os
import pathlib

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from nnn_cli.cli.application import app
from nnn_cli.data.biasfile import read_bias
from nnn_cli.data.inputs import open_embeddings
from nnn_cli.data.tables import read_truth
from nnn_cli.errors import InputError

runner = CliRunner()


class _TouchOnUnpickle:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _pickled_object_array(path, marker, shape=(3, 4)):
    arr = np.empty(shape, dtype=object)
    arr.flat[0] = _TouchOnUnpickle(marker)
    for i in range(1, arr.size):
        arr.flat[i] = 1.0
    np.save(path, arr, allow_pickle=True)
    # sanity: the file really does run code when unpickled
    np.load(path, allow_pickle=True)
    assert pathlib.Path(marker).exists()
    os.remove(marker)


def test_pickled_npy_embeddings_are_refused_never_loaded(tmp_path, hub_files):
    evil, marker = tmp_path / "evil.npy", tmp_path / "PWNED"
    _pickled_object_array(evil, marker)
    with pytest.raises(InputError, match="pickles are refused"):
        open_embeddings(evil)
    res = runner.invoke(
        app,
        [
            "bias",
            str(evil),
            "-r",
            str(hub_files["reference"]),
            "--alpha",
            "1",
            "--k",
            "2",
            "-o",
            str(tmp_path / "b.h5"),
        ],
    )
    assert res.exit_code == 2 and "pickles are refused" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["search", "-", "-g", str(hub_files["gallery"]), "-o", "-"], input=evil.read_bytes())
    assert res.exit_code == 2 and "pickles are refused" in res.output
    res = runner.invoke(app, ["info", str(evil)])
    assert res.exit_code == 0 and "object" in res.output
    assert not marker.exists()
    assert not (tmp_path / "b.h5").exists()


def test_pickled_bias_and_truth_files_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    bias, truth = tmp_path / "bias.npy", tmp_path / "truth.npy"
    _pickled_object_array(bias, marker, shape=(5,))
    _pickled_object_array(truth, marker, shape=(5,))
    with pytest.raises(InputError):
        read_bias(bias)
    with pytest.raises(InputError):
        read_truth(truth, 5, 5)
    assert not marker.exists()


def test_pickled_npz_member_is_only_described(tmp_path):
    marker = tmp_path / "PWNED"
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = _TouchOnUnpickle(marker), 1
    np.savez(tmp_path / "evil.npz", indices=arr, scores=np.zeros((2, 2), np.float32))
    res = runner.invoke(app, ["info", str(tmp_path / "evil.npz"), "--json"])
    assert res.exit_code == 0, res.output
    assert '"object"' in res.stdout
    assert not marker.exists()


@pytest.fixture
def outside(tmp_path):
    """A file outside the 'untrusted' one, which it must not be able to read."""
    src = tmp_path / "secret.h5"
    with h5py.File(src, "w") as f:
        f["embeddings"] = np.ones((4, 3), np.float32)
        f["bias"] = np.ones(4, np.float32)
    return src


def _external_link_file(path, target, name="embeddings"):
    with h5py.File(path, "w") as f:
        f[name] = h5py.ExternalLink(str(target), f"/{name}")


def _vds_file(path, target, name="embeddings", shape=(4, 3)):
    layout = h5py.VirtualLayout(shape=shape, dtype="f4")
    layout[...] = h5py.VirtualSource(str(target), name, shape=shape)
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset(name, layout)


def test_h5_external_link_is_refused(tmp_path, outside):
    evil = tmp_path / "link.h5"
    _external_link_file(evil, outside)
    with pytest.raises(InputError, match="external link"):
        open_embeddings(evil)
    link_bias = tmp_path / "linkbias.h5"
    _external_link_file(link_bias, outside, "bias")
    with pytest.raises(InputError, match="external link"):
        read_bias(link_bias)
    res = runner.invoke(app, ["info", str(evil)])
    assert res.exit_code == 2 and "external link" in res.output


def test_h5_virtual_dataset_reading_another_file_is_refused(tmp_path, outside, hub_files):
    evil = tmp_path / "vds.h5"
    _vds_file(evil, outside)
    with h5py.File(evil, "r") as f:  # sanity: h5py itself would happily read the other file
        assert f["embeddings"][()].sum() == 12
    with pytest.raises(InputError, match="virtual dataset"):
        open_embeddings(evil)
    res = runner.invoke(app, ["search", str(evil), "-g", str(hub_files["gallery"]), "-o", str(tmp_path / "r.h5")])
    assert res.exit_code == 2 and "virtual dataset" in res.output and "Traceback" not in res.output


def test_h5_virtual_dataset_inside_the_file_is_fine(tmp_path):
    path = tmp_path / "inner.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
        layout = h5py.VirtualLayout(shape=(4, 3), dtype="f4")
        layout[...] = h5py.VirtualSource(".", "raw", shape=(4, 3))
        f.create_virtual_dataset("embeddings", layout)
    np.testing.assert_array_equal(open_embeddings(path).read("ip")[0], [1, 2, 3])


def test_h5_external_raw_storage_is_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    np.ones((4, 3), np.float32).tofile(raw)
    path = tmp_path / "external.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("embeddings", shape=(4, 3), dtype="f4", external=[(str(raw), 0, 48)])
    with pytest.raises(InputError, match="external file"):
        open_embeddings(path)


def test_image_folder_walk_stays_inside_its_root(tmp_path):
    from nnn_cli.embed.readers import open_input

    root, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "a.png").write_bytes(b"png")
    (root / "sub" / "b.jpg").write_bytes(b"jpg")
    (elsewhere / "secret.png").write_bytes(b"secret")
    os.symlink(elsewhere / "secret.png", root / "escape.png")  # file link out of the root
    os.symlink(elsewhere, root / "linked_dir")  # folder link out of the root
    os.symlink(root / "a.png", root / "sub" / "alias.png")  # link that stays inside: allowed
    ids = [rec.id for rec in open_input(root, "image").records()]
    assert ids == ["a.png", "sub/alias.png", "sub/b.jpg"]
