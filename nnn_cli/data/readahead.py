"""Read ahead: the next block of a source is read (and checked, converted, hashed) by a thread while the
caller computes on the current one, so the cores do not wait on the file between blocks.

Before it, the exact bias read the reference 16,384 rows at a time on the main thread (converting and
hashing on the way) while both GEMM workers waited for the next block.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.1
"""How often a reader blocked on a full queue checks whether the consumer has gone."""

_STOP_WAIT_SECONDS = 2.0
"""How long a consumer that stopped early waits for the reader to finish its current read."""


def read_ahead(blocks: Iterable[T], depth: int = 1) -> Iterator[T]:
    """The items of ``blocks``, in order, produced by a reader thread up to ``depth`` items ahead.

    An exception raised while reading is raised here, at the item where it happened.  When the consumer
    stops early (``break``, an exception, a signal, the generator closed), the reader stops at its next
    item and closes ``blocks`` (its open files) from its own thread; nothing is left running once a read
    under way ends (waited for up to :data:`_STOP_WAIT_SECONDS`).  Holds at
    most ``depth`` items beyond the one the caller has and the one being read.
    """
    items: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    gone = threading.Event()

    def put(entry: tuple) -> bool:
        while not gone.is_set():
            try:
                items.put(entry, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        source = iter(blocks)
        try:
            for item in source:
                if not put(("item", item)):
                    break
            else:
                put(("done", None))
        except BaseException as exc:  # handed to the consumer, raised in its thread
            put(("error", exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=reader, name="nnn-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "done":
                return
            else:
                raise value
    finally:
        gone.set()
        # the reader stops at its next item; a read still under way (a slow remote file) is not waited for
        # longer than this, so a signal's exit is not held up by it (the thread is a daemon)
        thread.join(timeout=_STOP_WAIT_SECONDS)


def started(work: Callable[[], T]) -> Callable[[], T]:
    """``work`` started now on a thread of its own; the returned function waits for it and gives its
    result (or raises what it raised), each time it is called.

    For work that is needed only at the end (the leak sketch a bias file records) and reads its own
    input: it fills the moments the main computation leaves a core idle (start-up of the workers, the
    last uneven tiles, reading and writing) instead of running alone after it."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # handed to the caller, raised in its thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="nnn-beside", daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result
