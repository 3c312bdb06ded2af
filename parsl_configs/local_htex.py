"""Real processes on this machine: one HighThroughputExecutor (one worker) per site, plus the
aggregator's. Works without an activated virtual environment: the interchange and worker-pool
scripts are started by absolute path, next to the running interpreter.
"""

import sys
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
from parsl.providers import LocalProvider

SITES = 4
BIN = Path(sys.executable).parent


def executor(label: str) -> HighThroughputExecutor:
    return HighThroughputExecutor(
        label=label,
        address="127.0.0.1",
        max_workers_per_node=1,
        encrypted=False,  # loopback only
        launch_cmd=DEFAULT_LAUNCH_CMD.replace(
            "process_worker_pool.py", f"{sys.executable} {BIN / 'process_worker_pool.py'}", 1
        ),
        interchange_launch_cmd=[sys.executable, str(BIN / "interchange.py")],
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
    )


config = Config(
    executors=[executor(f"site-{i}") for i in range(SITES)] + [executor("aggregator")],
)
