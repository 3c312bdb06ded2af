"""Building blocks of the Parsl config modules in ``parsl_configs/``.

HighThroughputExecutor starts ``interchange.py`` and ``process_worker_pool.py`` by name, which
fails wherever the venv's ``bin`` is not on PATH (a non-login ssh shell, a batch job, a cron
job). These helpers start both by absolute interpreter path instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from parsl.executors import HighThroughputExecutor
from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
from parsl.providers import LocalProvider

#: The worker pool as a module, so only the interpreter's path has to be known where it runs.
WORKER_POOL_MODULE = "parsl.executors.high_throughput.process_worker_pool"


def worker_launch_cmd(python: str) -> str:
    """Parsl's default worker-pool command, run by the given interpreter."""
    return DEFAULT_LAUNCH_CMD.replace(
        "process_worker_pool.py", f"{python} -m {WORKER_POOL_MODULE}", 1
    )


def interchange_launch_cmd() -> list[str]:
    """The interchange, started by the controller's own interpreter.

    It runs in a session of its own and ends with the controller (see
    :mod:`proxyflox.lifeline`).
    """
    interchange = str(Path(sys.executable).parent / "interchange.py")
    return [sys.executable, "-m", "proxyflox.lifeline", sys.executable, interchange]


def local_executor(label: str, workers: int = 1) -> HighThroughputExecutor:
    """An executor whose single worker pool runs on this machine (e.g. the aggregator's)."""
    return HighThroughputExecutor(
        label=label,
        address="127.0.0.1",
        max_workers_per_node=workers,
        encrypted=False,  # loopback only
        # A pool whose interchange is gone (its controller was killed) exits within ~20 s.
        heartbeat_period=5,
        heartbeat_threshold=20,
        launch_cmd=worker_launch_cmd(sys.executable),
        interchange_launch_cmd=interchange_launch_cmd(),
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
