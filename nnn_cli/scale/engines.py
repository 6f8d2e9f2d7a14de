"""The one place an engine name becomes a scheduler (``--engine local|ray``)."""

from __future__ import annotations

from nnn_cli.errors import ParameterError
from nnn_cli.scale.scheduler import ENGINES, EngineOptions, LocalScheduler, Scheduler


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
    io_timeout: float | None = None,
) -> Scheduler:
    """The scheduler for ``--engine`` (the only place an engine is named)."""
    if engine == "local":
        return LocalScheduler(threads)
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            from nnn_cli.errors import DependencyError, install_hint

            raise DependencyError(f"--engine ray needs Ray: {install_hint('ray')}") from None
        from nnn_cli.scale.ray.scheduler import RayScheduler

        return RayScheduler(address, gpus_per_task, max_retries, num_cpus, num_gpus, init_kwargs, io_timeout=io_timeout)
    raise ParameterError(f"unknown --engine {engine!r}: use {' or '.join(ENGINES)}")


def check_reachable(engine: EngineOptions) -> None:
    """An existing cluster (``--engine ray --address``) answers within ``--io-timeout``, checked before
    anything is opened or written (a bad, unreachable or silent address: one line naming it, exit 2)."""
    if engine.engine == "ray" and engine.address is not None:
        from nnn_cli.scale.ray.cluster import check_address

        check_address(engine.address, engine.io_timeout)


__all__ = ["check_reachable", "make_scheduler"]
