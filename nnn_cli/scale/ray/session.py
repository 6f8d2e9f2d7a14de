"""Ray sessions for `--engine ray`: a private local Ray or an existing cluster, and the options of a task.
(The cluster's lifecycle and manners are :mod:`nnn_cli.scale.ray.cluster`; plans are :mod:`nnn_cli.scale.grid`,
tasks :mod:`nnn_cli.scale.tasks`, the submission loop :class:`nnn_cli.scale.ray.scheduler.RayScheduler`.)"""

from __future__ import annotations

from nnn_cli.scale.ray.cluster import ray_session

__all__ = ["ray_session", "task_options"]


def task_options(max_retries: int, gpus_per_task: float = 0) -> dict:
    """Ray options of a compute task: one CPU (its BLAS is single-threaded), retried on worker death and on
    I/O errors, and ``gpus_per_task`` GPUs when asked; a merge task takes them without the GPUs."""
    opts = {"num_cpus": 1, "max_retries": int(max_retries), "retry_exceptions": [OSError]}
    if gpus_per_task:
        opts["num_gpus"] = gpus_per_task
    return opts
