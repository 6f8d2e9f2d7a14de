"""Reading ahead (data/readahead.py) and aligned block reads: order, errors where they happen, an early
stop that leaves nothing running, and blocks that are GEMM operands as read."""

import threading
import time

import numpy as np
import pytest

from nnn_cli.core.topk import ALIGNMENT
from nnn_cli.data.inputs import open_embeddings
from nnn_cli.data.npy import NpyRows
from nnn_cli.data.readahead import read_ahead, started
from nnn_cli.errors import InputError


def reader_threads(settle: float = 10.0):
    """The reader threads still alive, once they have had ``settle`` seconds to end (a loaded machine)."""
    deadline = time.monotonic() + settle
    while True:
        alive = [t for t in threading.enumerate() if t.name in ("nnn-read-ahead", "nnn-beside")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def test_items_come_in_order_and_ahead_by_at_most_depth():
    produced = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    seen = []
    for item in read_ahead(source(), depth=2):
        time.sleep(0.01)  # the reader runs ahead while the consumer works ...
        assert len(produced) - len(seen) <= 2 + 2  # ... by the queue, the item in hand, the one being made
        seen.append(item)
    assert seen == list(range(20))
    assert not reader_threads()


def test_an_error_is_raised_at_the_item_where_it_happened():
    def source():
        yield 1
        yield 2
        raise InputError("x.npy: cannot read data")

    got = []
    with pytest.raises(InputError, match="cannot read data"):
        for item in read_ahead(source()):
            got.append(item)
    assert got == [1, 2]
    assert not reader_threads()


def test_an_early_stop_closes_the_source_and_stops_the_reader():
    closed = threading.Event()

    def source():
        try:
            yield from range(10**6)
        finally:
            closed.set()

    for item in read_ahead(source()):
        if item == 3:
            break
    assert closed.wait(5)
    assert not reader_threads()


def test_started_gives_the_result_or_the_error():
    assert started(lambda: 41 + 1)() == 42

    def fails():
        raise InputError("ref.npy: row 3 contains NaN")

    result = started(fails)
    with pytest.raises(InputError, match="row 3"):
        result()
    assert not reader_threads()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_blocks_are_aligned_and_equal_to_the_file(tmp_path, dtype, metric):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 24)).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    src = open_embeddings(tmp_path / "x.npy")
    rows = []
    for _, block in src.iter_blocks(metric, 333):
        assert block.ctypes.data % ALIGNMENT == 0 and block.dtype == np.float32
        rows.append(block)
    want = x.astype(np.float32)
    if metric == "cosine":
        want = want / np.sqrt(np.einsum("ij,ij->i", want, want))[:, None]  # the sources' own formula
    np.testing.assert_array_equal(np.vstack(rows), want)
    with NpyRows(tmp_path / "x.npy") as raw:
        part = raw[5:17]
        assert part.ctypes.data % ALIGNMENT == 0
        np.testing.assert_array_equal(part, x[5:17])


def test_a_file_cut_short_while_read_ahead_is_refused_in_one_line(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((100, 8), dtype=np.float32))
    src = open_embeddings(tmp_path / "x.npy")  # checked whole when opened; cut short before it is read
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match="truncated"):
        for _ in read_ahead(src.iter_blocks("ip", 30)):
            pass
