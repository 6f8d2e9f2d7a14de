"""Where the blocks of a plan run: a :class:`Scheduler` (local threads or Ray tasks), chosen late, in one place.

A plan is a list of :class:`BlockTask`: per block, independent *parts* (e.g. the block's top-k against one
reference partition) and a *merge* that receives the parts' results in order (e.g. merge them, compute the
bias, ``sink.put_block``).  Parts and merges are plain, pure functions of their arguments (see
:mod:`nnn_cli.scale.tasks`); every scheduler runs the same ones on the same plan and hands each block's merge
result to ``on_done`` on the driver, so the results do not depend on where they ran.

* :class:`LocalScheduler`: a thread pool in this process (the tasks' BLAS is single-threaded per task);
* :class:`RayScheduler`: Ray tasks on a private local Ray or an existing cluster (``address``), parts with
  ``gpus_per_task`` GPUs, retried ``max_retries`` times on worker death and I/O errors.

:func:`make_scheduler` is the one place that turns ``--engine`` into a scheduler; jobs never name an engine.
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


def _window(slots: int, parts: int) -> int:
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
        window = _window(self.slots, max((len(t.parts) for t in queue), default=1))
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


class RayScheduler:
    """Block tasks as Ray tasks: a private local Ray on 127.0.0.1 (``address=None``) or an existing cluster."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        gpus_per_task: float = 0.0,
        max_retries: int = 3,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        init_kwargs: dict | None = None,
    ):
        self.address, self.gpus_per_task, self.max_retries = address, float(gpus_per_task), int(max_retries)
        self._session_args = (address, num_cpus, num_gpus, init_kwargs)
        self._stack: contextlib.ExitStack | None = None
        self._ray: Any = None
        self._remote: dict = {}

    def __enter__(self) -> RayScheduler:
        from nnn_cli.scale.ray.session import ray_session

        self._stack = contextlib.ExitStack()
        self._ray = self._stack.enter_context(ray_session(*self._session_args))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._ray, self._remote = None, None, {}

    @property
    def slots(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 1)) if self._ray is not None else 1

    def share(self, obj: Any) -> Any:
        return self._ray.put(obj)

    def _fn(self, call: Call) -> Any:
        from nnn_cli.scale.ray.session import task_options

        key = (call.fn, call.gpu)
        if key not in self._remote:
            opts = task_options(self.max_retries, self.gpus_per_task if call.gpu else 0)
            self._remote[key] = self._ray.remote(call.fn).options(**opts)
        return self._remote[key]

    def _submit(self, task: BlockTask) -> Any:
        refs = [self._fn(c).remote(*c.args, **c.kwargs) for c in task.parts]
        m = task.merge
        return self._fn(m).remote(*m.args, *refs, **m.kwargs)

    def run(
        self,
        tasks: Sequence[BlockTask],
        on_done: DoneFn,
        progress: ProgressFn | None = None,
        total: int | None = None,
        done: int = 0,
    ) -> None:
        ray, queue = self._ray, list(tasks)
        total = len(queue) + done if total is None else total
        window = _window(self.slots, max((len(t.parts) for t in queue), default=1))
        pending: dict = {}
        if progress:
            progress(done, total)
        while queue or pending:
            while queue and len(pending) < window:
                task = queue.pop(0)
                pending[self._submit(task)] = task
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                task = pending.pop(ref)
                on_done(task.key, _get(ray, ref))
                done += 1
                if progress:
                    progress(done, total)


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``; a task's own :class:`~nnn_cli.errors.NNNError` is raised as itself (one line)."""
    from nnn_cli.errors import NNNError

    try:
        return ray.get(ref)
    except Exception as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, NNNError):
            raise cause from None
        raise


def make_scheduler(
    engine: str = "local",
    *,
    threads: int = 0,
    address: str | None = None,
    gpus_per_task: float = 0.0,
    max_retries: int = 3,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
) -> Scheduler:
    """The scheduler for ``--engine`` (the only place an engine is named)."""
    if engine == "local":
        return LocalScheduler(threads)
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            from nnn_cli.errors import DependencyError

            raise DependencyError("--engine ray needs Ray: pip install 'nnn-cli[ray]'") from None
        return RayScheduler(address, gpus_per_task, max_retries, num_cpus, num_gpus, init_kwargs)
    raise ParameterError(f"unknown --engine {engine!r}: use {' or '.join(ENGINES)}")


__all__ = ["BlockTask", "Call", "LocalScheduler", "RayScheduler", "Scheduler", "make_scheduler"]
