"""Threads in one process: four site executors and the aggregator's. What CI uses.

Every app runs inside the controller's own process, so this config cannot show that the
controller never touches weights; ``local_htex.py`` does.
"""

from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

SITES = 4

config = Config(
    executors=[ThreadPoolExecutor(label=f"site-{i}", max_threads=1) for i in range(SITES)]
    + [ThreadPoolExecutor(label="aggregator", max_threads=1)],
    strategy="none",
)
