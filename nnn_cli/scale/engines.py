"""The one place an engine name becomes a scheduler (``--engine local|ray``)."""

from __future__ import annotations

from nnn_cli.errors import ParameterError
from nnn_cli.scale.scheduler import ENGINES, LocalScheduler, Scheduler


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
        from nnn_cli.scale.ray.scheduler import RayScheduler

        return RayScheduler(address, gpus_per_task, max_retries, num_cpus, num_gpus, init_kwargs)
    raise ParameterError(f"unknown --engine {engine!r}: use {' or '.join(ENGINES)}")


__all__ = ["make_scheduler"]
