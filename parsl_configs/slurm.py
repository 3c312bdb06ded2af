"""A Slurm cluster: site executors whose worker pools run in Slurm jobs (SlurmProvider +
SrunLauncher); the aggregator runs where the workflow runs.

Settings (see ``proxyflox/hpc.py``): a YAML file named by ``PROXYFLOX_SLURM``, overridden by
``PROXYFLOX_SLURM_<KEY>`` environment variables, e.g.::

    PROXYFLOX_SLURM_PARTITION=cpu PROXYFLOX_SLURM_ACCOUNT=myproj \\
    PROXYFLOX_SLURM_WALLTIME=02:00:00 PROXYFLOX_SLURM_SITES=4 \\
    PROXYFLOX_SLURM_WORKER_INIT="module load python" \\
        python workflows/fedavg.py --config slurm.py --sites 4

``mode: pilot`` (default, from a login node): each site executor submits one job of ``nodes``
nodes (``sbatch``) that lives for the whole run. ``mode: allocation`` (``scripts/fedavg.sbatch``):
the workflow runs inside one job; every node but the first runs one site executor (``srun``).
"""

import sys

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher, WrappedLauncher
from parsl.providers import LocalProvider, SlurmProvider

from proxyflox.executors import (
    interchange_launch_cmd,
    local_executor,
    warn_unencrypted,
    worker_launch_cmd,
)
from proxyflox.hpc import (
    SlurmSettings,
    allocation_nodes,
    controller_address,
    load_settings,
    site_nodes,
)
from proxyflox.hpc import site_options as options_of

settings = load_settings(SlurmSettings, "slurm")
address = controller_address(settings, "slurm")
python = settings.python or sys.executable


def pilot_provider() -> SlurmProvider:
    """One job per site executor, kept for the whole run."""
    return SlurmProvider(
        partition=settings.partition,
        account=settings.account,
        qos=settings.qos,
        nodes_per_block=settings.nodes,
        init_blocks=1,
        min_blocks=1,
        max_blocks=1,
        walltime=settings.walltime,
        exclusive=settings.exclusive,
        scheduler_options=settings.scheduler_options,
        worker_init=settings.worker_init,
        launcher=SrunLauncher(),
    )


def allocation_provider(node: str) -> LocalProvider:
    """A job step on one node of the allocation this workflow runs in."""
    return LocalProvider(
        init_blocks=1,
        min_blocks=1,
        max_blocks=1,
        worker_init=settings.worker_init,
        # --overlap: a step may share the node with others (a one-node allocation runs all).
        launcher=WrappedLauncher(
            prepend=f"srun --nodes=1 --ntasks=1 --nodelist={node} --overlap --kill-on-bad-exit=1"
        ),
    )


def site_executor(label: str, provider: SlurmProvider | LocalProvider) -> HighThroughputExecutor:
    return HighThroughputExecutor(
        label=label,
        address=address,
        max_workers_per_node=settings.workers_per_node,
        launch_cmd=worker_launch_cmd(python),
        interchange_launch_cmd=interchange_launch_cmd(),
        # The workers read the certificates from the run directory on the shared filesystem.
        encrypted=settings.encrypted,
        provider=provider,
    )


if settings.mode == "allocation":
    sites = [
        site_executor(f"site-{i}", allocation_provider(node))
        for i, node in enumerate(site_nodes(allocation_nodes("slurm")))
    ]
else:
    sites = [site_executor(f"site-{i}", pilot_provider()) for i in range(settings.sites)]

if not settings.encrypted:
    warn_unencrypted("slurm.py: setting encrypted", sites[0].worker_port_range)
# On a login node, other users reach this machine's loopback ports too.
aggregator = local_executor("aggregator", encrypted=settings.encrypted)
config = Config(executors=[*sites, aggregator])
site_options = options_of(settings, [executor.label for executor in sites])
