"""Raspberry Pis over SSH: one HighThroughputExecutor per Pi, the aggregator on this machine
(or, with the inventory's ``aggregator`` section, on a machine of its own, started over ssh too).

The Pis come from an inventory file (``--inventory FILE``, ``PROXYFLOX_PIS=FILE``, else
``parsl_configs/pis.yaml``; template: ``parsl_configs/pis.example.yaml``). Each Pi's worker pool
is started over ``ssh -tt`` and connects back to ``controller_address``; closing ssh stops it.
Parsl's traffic is encrypted and authenticated (CurveZMQ) unless the inventory says
``encrypted: false``: the launcher copies the run's certificates to each Pi over the same ssh
before its worker pool starts, and removes them when the pool ends (``proxyflox/pi_launcher.py``).
Per-Pi ``site_options`` (batch size, epochs, threads, device, data) reach that Pi's train app.
"""

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

from proxyflox.executors import (
    interchange_launch_cmd,
    local_executor,
    warn_unencrypted,
    worker_launch_cmd,
)
from proxyflox.inventory import Inventory, Pi, load_inventory
from proxyflox.pi_launcher import PiLauncher

inventory = load_inventory()
if not inventory.encrypted:
    warn_unencrypted(f"inventory {inventory.path}: encrypted", inventory.worker_port_range)


def pi_executor(pi: Pi, inventory: Inventory) -> HighThroughputExecutor:
    return HighThroughputExecutor(
        label=pi.name,
        address=inventory.controller_address,
        worker_port_range=inventory.worker_port_range,
        max_workers_per_node=pi.workers,
        encrypted=inventory.encrypted,
        launch_cmd=worker_launch_cmd(pi.python),
        interchange_launch_cmd=interchange_launch_cmd(),
        worker_logdir_root=pi.worker_logdir,
        # A silent Pi (no TCP reset) is dropped after a minute instead of Parsl's two.
        heartbeat_period=10,
        heartbeat_threshold=60,
        provider=LocalProvider(
            launcher=PiLauncher(pi),
            init_blocks=1,
            min_blocks=1,
            max_blocks=1,
        ),
    )


aggregator = (
    pi_executor(inventory.aggregator, inventory)
    if inventory.aggregator is not None
    else local_executor("aggregator", encrypted=inventory.encrypted)
)
config = Config(executors=[pi_executor(pi, inventory) for pi in inventory.pis] + [aggregator])
site_options = inventory.site_options()
