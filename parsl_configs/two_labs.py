"""Two labs, each with its own aggregator: an aggregator tree on local processes.

Each executor is a local worker pool standing in for a machine: the sites ``lab-a-0``,
``lab-a-1``, ``lab-b-0``, ``lab-b-1``, each lab's workstation (``lab-a``, ``lab-b``) and the
run's ``aggregator``, the root. ``tree`` groups them (an experiment's own ``tree`` replaces it):
each lab's aggregator combines its sites' updates into one partial and sends that up, so a lab's
uplink carries one update per round instead of one per site. On real machines, each executor is
started on its machine as in ``pis.py`` or ``slurm.py``, and a lab may name a store of its own
(``store:`` in its group, e.g. the lab's Redis).
"""

from parsl.config import Config

from proxyflox.executors import local_executor

LABS = ("lab-a", "lab-b")
SITES_PER_LAB = 2

config = Config(
    executors=[local_executor(f"{lab}-{i}") for lab in LABS for i in range(SITES_PER_LAB)]
    + [local_executor(lab) for lab in LABS]
    + [local_executor("aggregator")],
)

tree = {
    "groups": {
        lab: {"aggregator": lab, "sites": [f"{lab}-{i}" for i in range(SITES_PER_LAB)]}
        for lab in LABS
    }
}
