"""The Ray scheduler: block tasks as Ray tasks on a private local Ray or an existing cluster.

The cluster itself (start, ownership, quiet, the address checked within ``io_timeout``, one-line errors,
signals) is :func:`nnn_cli.scale.ray.cluster.ray_session`, entered for the ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from nnn_cli.core.topk import ProgressFn
from nnn_cli.scale.scheduler import BlockTask, Call, DoneFn, window_size


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
        max_in_flight: int | None = None,
        io_timeout: float | None = None,
    ):
        self.address, self.gpus_per_task, self.max_retries = address, float(gpus_per_task), int(max_retries)
        self._session_args = (address, num_cpus, num_gpus, init_kwargs)
        self.io_timeout = io_timeout  # seconds to reach --address (None: the run's --io-timeout / NNN_IO_TIMEOUT)
        self._stack: contextlib.ExitStack | None = None
        self._ray: Any = None
        self._remote: dict = {}
        self.max_in_flight = max_in_flight  # blocks submitted at once (None: from the cluster's CPUs)

    def __enter__(self) -> RayScheduler:
        from nnn_cli.scale.ray.session import ray_session

        self._stack = contextlib.ExitStack()
        self._ray = self._stack.enter_context(ray_session(*self._session_args, io_timeout=self.io_timeout))
        return self

    def __exit__(self, *exc: Any) -> None:
        # the exception of the `with` body goes through the session, which turns a signal's KeyboardInterrupt
        # back into what the handler raised (SIGTERM: Terminated) and Ray's errors into one-line ones
        stack, self._stack, self._ray, self._remote = self._stack, None, None, {}
        if stack is not None:
            stack.__exit__(*(exc if len(exc) == 3 else (None, None, None)))

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
        window = self.max_in_flight or window_size(self.slots, max((len(t.parts) for t in queue), default=1))
        pending: dict = {}
        if progress:
            progress(done, total)
        try:
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
        except BaseException:
            for ref in pending:  # on a shared cluster, nothing of this run goes on writing after it stopped
                with contextlib.suppress(Exception):
                    ray.cancel(ref, recursive=True)
            raise


def _get(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``; a task's exception is raised as itself with a one-line message (an
    :class:`~nnn_cli.errors.NNNError` exactly as raised, so the pipeline aborts its sink), Ray's own failures as
    one-line :class:`~nnn_cli.scale.ray.cluster.ClusterError` (:func:`~nnn_cli.scale.ray.cluster.translate`)."""
    from nnn_cli.scale.ray.cluster import translate

    try:
        return ray.get(ref)
    except Exception as exc:
        better = translate(exc, ray)
        if better is None or better is exc:
            raise
        raise better from exc
