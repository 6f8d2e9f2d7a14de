"""Where the blocks of a plan run: a :class:`Scheduler` (local threads or Ray tasks), chosen late, in one place.

A plan is a list of :class:`BlockTask`: per block, independent *parts* (e.g. the block's top-k against one
reference partition) and a *merge* that receives the parts' results in order (e.g. merge them, compute the
bias, ``sink.put_block``).  Parts and merges are plain, pure functions of their arguments (see
:mod:`nnn_cli.scale.tasks`); every scheduler runs the same ones on the same plan and hands each block's merge
result to ``on_done`` on the driver, so the results do not depend on where they ran.

* :class:`LocalScheduler`: a thread pool in this process (the tasks' BLAS is single-threaded per task);
* :class:`nnn_cli.scale.ray.scheduler.RayScheduler`: Ray tasks on a private local Ray or an existing cluster (``address``), parts with
  ``gpus_per_task`` GPUs, retried ``max_retries`` times on worker death and I/O errors.

``nnn_cli.scale.engines.make_scheduler`` is the one place that turns ``--engine`` into a scheduler; jobs never name an engine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from nnn_cli.core.topk import ProgressFn
from nnn_cli.errors import ParameterError

ENGINES = ("local", "ray")


@dataclass
class EngineOptions:
    """Where the blocks run: ``local`` (threads of this process) or ``ray`` (Ray tasks; ``address`` None
    starts a private local Ray for the run), and the blocked run's own options (plan, resume, retries,
    storage options for URLs, the I/O timeout)."""

    engine: str = "local"
    address: str | None = None
    resume: bool = False
    gpus_per_task: float = 0.0
    block_rows: int | None = None
    partition_rows: int | None = None
    max_retries: int = 3
    storage_options: dict = field(default_factory=dict)
    io_timeout: float | None = None

    def check(self) -> EngineOptions:
        """Validated once, where the request is built."""
        if self.engine not in ENGINES:
            raise ParameterError(f"unknown --engine {self.engine!r}: use {' or '.join(ENGINES)}")
        if self.engine == "local":
            used = [
                name
                for name, on in (("--address", self.address is not None), ("--gpus-per-task", bool(self.gpus_per_task)))
                if on
            ]
            if used:
                raise ParameterError(f"{', '.join(used)} only apply with --engine ray")
        if self.gpus_per_task < 0 or self.max_retries < 0:
            raise ParameterError("--gpus-per-task and --max-retries must be >= 0")
        if self.io_timeout is not None:
            from nnn_cli.data.objstore import check_io_timeout

            self.io_timeout = check_io_timeout(self.io_timeout)
        return self

    def scheduler_kwargs(self) -> dict:
        return {
            "address": self.address,
            "gpus_per_task": self.gpus_per_task,
            "max_retries": self.max_retries,
            "io_timeout": self.io_timeout,
        }

    def ray_kwargs(self) -> dict:
        """Keyword arguments of :func:`nnn_cli.scale.ray.ray_bias` and friends."""
        kw = {**self.scheduler_kwargs(), "storage_options": self.storage_options or None}
        if self.block_rows is not None:
            kw["block_rows"] = self.block_rows
        if self.partition_rows is not None:
            kw["partition_rows"] = self.partition_rows
        return kw


@dataclass(frozen=True)
class Call:
    """``fn(*args, **kwargs)``; ``gpu`` asks for the scheduler's per-task GPUs (compute parts only)."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    gpu: bool = False


@dataclass(frozen=True)
class BlockTask:
    """One block of a plan: ``parts`` run independently, then ``merge(*merge.args, *results, **merge.kwargs)``."""

    key: int
    parts: tuple[Call, ...]
    merge: Call


DoneFn = Callable[[int, Any], None]


@runtime_checkable
class Scheduler(Protocol):
    """Runs a plan's block tasks somewhere; used as a context manager (a session: threads, a Ray connection)."""

    name: str

    def __enter__(self) -> Scheduler: ...

    def __exit__(self, *exc: object) -> None: ...

    @property
    def slots(self) -> int:
        """How many parts can run at once (sizes the window of blocks in flight)."""
        ...

    def share(self, obj: Any) -> Any:
        """A handle to pass to many tasks (Ray: one object-store copy; local: the object itself)."""
        ...

    def run(
        self,
        tasks: Sequence[BlockTask],
        on_done: DoneFn,
        progress: ProgressFn | None = None,
        total: int | None = None,
        done: int = 0,
    ) -> None:
        """Run every task, at most a window of blocks in flight; ``on_done(key, merge result)`` on the driver
        in completion order; ``progress(done, total)`` after each.  The first failure is raised as it was
        raised in the task (an :class:`~nnn_cli.errors.NNNError` stays one)."""
        ...


def window_size(slots: int, parts: int) -> int:
    return max(2, 2 * slots // max(1, parts) + 1)


class LocalScheduler:
    """Block tasks on a pool of ``threads`` threads in this process (0: one per core)."""

    name = "local"

    def __init__(self, threads: int = 0):
        self.threads = int(threads) or (os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        self._stack: contextlib.ExitStack | None = None
        self._workers = 0

    def __enter__(self) -> LocalScheduler:
        from nnn_cli.core.topk import selection_threads, single_threaded_blas

        # each task is single-threaded (BLAS too, as in a Ray worker): the tasks are the parallelism, and a
        # GEMM's rounding does not depend on how many threads another task's BLAS call happens to use
        self._workers = selection_threads()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(single_threaded_blas())
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="nnn-block")
        return self

    def __exit__(self, *exc: object) -> None:
        from nnn_cli.core.topk import set_workers

        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._stack is not None:
            self._stack.close()
            self._stack = None
            set_workers(self._workers)  # the tasks set one worker each (process-wide here)

    @property
    def slots(self) -> int:
        return self.threads

    def share(self, obj: Any) -> Any:
        return obj

    def run(
        self,
        tasks: Sequence[BlockTask],
        on_done: DoneFn,
        progress: ProgressFn | None = None,
        total: int | None = None,
        done: int = 0,
    ) -> None:
        if self._pool is None:
            raise RuntimeError("LocalScheduler.run outside its `with` block")
        pool, queue = self._pool, list(tasks)
        total = len(queue) + done if total is None else total
        window = window_size(self.slots, max((len(t.parts) for t in queue), default=1))
        parts: dict[int, list[Future]] = {}
        merges: dict[Future, BlockTask] = {}
        if progress:
            progress(done, total)
        try:
            while queue or parts or merges:
                while queue and len(parts) + len(merges) < window:
                    task = queue.pop(0)
                    parts[task.key] = [pool.submit(c.fn, *c.args, **c.kwargs) for c in task.parts]
                    parts[task.key].append(_marker(task))
                live = [f for fs in parts.values() for f in fs[:-1]] + list(merges)
                finished, _ = wait(live, return_when=FIRST_COMPLETED) if live else (set(), set())
                for f in finished:
                    if f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
                for key in [k for k, fs in parts.items() if all(f.done() for f in fs[:-1])]:
                    fs = parts.pop(key)
                    task = fs[-1].result()
                    m = task.merge
                    merges[pool.submit(m.fn, *m.args, *[f.result() for f in fs[:-1]], **m.kwargs)] = task
                for f in [f for f in merges if f.done()]:
                    task = merges.pop(f)
                    on_done(task.key, f.result())
                    done += 1
                    if progress:
                        progress(done, total)
        except BaseException:
            for fs in parts.values():
                for f in fs:
                    f.cancel()
            raise


def _marker(task: BlockTask) -> Future:
    """A finished future holding ``task`` (kept as the last entry of a block's part list)."""
    f: Future = Future()
    f.set_result(task)
    return f


__all__ = ["BlockTask", "Call", "DoneFn", "EngineOptions", "LocalScheduler", "Scheduler", "window_size"]
