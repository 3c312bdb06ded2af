"""Real processes on this machine: one HighThroughputExecutor (one worker) per site, plus the
aggregator's. Works without an activated virtual environment: the interchange and worker pool
are started by the running interpreter's absolute path (see proxyflox/executors.py).
"""

from parsl.config import Config

from proxyflox.executors import local_executor

SITES = 4

config = Config(
    executors=[local_executor(f"site-{i}") for i in range(SITES)] + [local_executor("aggregator")],
)
