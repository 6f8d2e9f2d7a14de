"""Ray sessions for `--engine ray`: a private local Ray or an existing cluster, and the options of a task.
(Plans are :mod:`nnn_cli.scale.grid`, tasks :mod:`nnn_cli.scale.tasks`, the submission loop
:class:`nnn_cli.scale.scheduler.RayScheduler`.)"""

from __future__ import annotations

import contextlib
import os

from nnn_cli.errors import ParameterError


def _ray():
    try:
        import ray
    except ImportError:
        raise ParameterError("--engine ray needs Ray: pip install 'nnn-cli[ray]'") from None
    return ray


# ---------------------------------------------------------------------------
# Ray session: a private local cluster, or a connection to an existing one
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    init_kwargs: dict | None = None,
):
    """Yield with Ray initialised.  Reuses a connection the caller already holds (and leaves it);
    ``address=None`` starts a private cluster bound to 127.0.0.1 and shuts it down after."""
    if address is None:  # read by Ray at import: keeps a private cluster's addresses on 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"configure_logging": False, "log_to_driver": False, **(init_kwargs or {})}
    if address is None:
        kwargs = {
            "num_cpus": num_cpus or os.cpu_count(),
            "include_dashboard": False,
            "_node_ip_address": "127.0.0.1",
            **({"num_gpus": num_gpus} if num_gpus is not None else {}),
            **kwargs,
        }
        ray.init(**kwargs)
    else:
        ray.init(address=address, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def task_options(max_retries: int, gpus_per_task: float = 0) -> dict:
    """Ray options of a compute task: one CPU (its BLAS is single-threaded), retried on worker death and on
    I/O errors, and ``gpus_per_task`` GPUs when asked; a merge task takes them without the GPUs."""
    opts = {"num_cpus": 1, "max_retries": int(max_retries), "retry_exceptions": [OSError]}
    if gpus_per_task:
        opts["num_gpus"] = gpus_per_task
    return opts
