"""Building blocks of the Parsl config modules in ``parsl_configs/``.

HighThroughputExecutor starts ``interchange.py`` and ``process_worker_pool.py`` by name, which
fails wherever the venv's ``bin`` is not on PATH (a non-login ssh shell, a batch job, a cron
job). These helpers start both by absolute interpreter path instead.

Deployments whose workers run on other machines keep Parsl's default ``encrypted=True``
(CurveZMQ: workers must hold the run's certificates); :func:`warn_unencrypted` is what a user who
turns it off is told.
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


#: Warnings already printed by this process (a config module may be imported more than once).
_warned: set[str] = set()


def warn_unencrypted(setting: str, ports: tuple[int, int] | None) -> None:
    """One line on stderr (once per process) naming the risk of ``encrypted: false``."""
    where = f" ({ports[0]}-{ports[1]})" if ports else ""
    line = (
        f"warning: {setting} is false: Parsl's traffic to the workers is neither encrypted nor "
        f"authenticated; any host that reaches this machine's worker ports{where} can register "
        "as a worker, receive tasks and send back pickles that the controller deserializes, "
        "running code as you"
    )
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr)


def local_executor(label: str, workers: int = 1, encrypted: bool = False) -> HighThroughputExecutor:
    """An executor whose single worker pool runs on this machine (e.g. the aggregator's).

    It listens on loopback only. ``encrypted``: CurveZMQ all the same, for a machine other users
    log into too (a login node), where loopback ports are open to every one of them.
    """
    return HighThroughputExecutor(
        label=label,
        address="127.0.0.1",
        max_workers_per_node=workers,
        encrypted=encrypted,
        # A pool whose interchange is gone (its controller was killed) exits within ~20 s.
        heartbeat_period=5,
        heartbeat_threshold=20,
        launch_cmd=worker_launch_cmd(sys.executable),
        interchange_launch_cmd=interchange_launch_cmd(),
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )
