"""ALCF Polaris (PBS Pro): site executors whose worker pools run in PBS jobs, one worker per GPU
(PBSProProvider + MpiExecLauncher, in the shape of Parsl's own ``parsl/configs/polaris.py``);
the aggregator runs where the workflow runs.

Settings (see ``proxyflox/hpc.py``): a YAML file named by ``PROXYFLOX_POLARIS``, overridden by
``PROXYFLOX_POLARIS_<KEY>`` environment variables, e.g.::

    PROXYFLOX_POLARIS_ACCOUNT=myproj PROXYFLOX_POLARIS_NODES=2 \\
    PROXYFLOX_POLARIS_WORKER_INIT="module use /soft/modulefiles; module load conda; \\
        conda activate /path/to/env" \\
        python workflows/fedavg.py --config polaris.py --sites 8

``mode: pilot`` (default, from a login node): each site executor submits one job of ``nodes``
nodes (``qsub``) that lives for the whole run. ``mode: allocation`` (``scripts/fedavg.qsub``):
the workflow runs inside one job; every node but the first runs one site executor (``mpiexec``).
"""

import sys

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import MpiExecLauncher, WrappedLauncher
from parsl.providers import LocalProvider, PBSProProvider

from proxyflox.executors import (
    interchange_launch_cmd,
    local_executor,
    warn_unencrypted,
    worker_launch_cmd,
)
from proxyflox.hpc import (
    PbsSettings,
    allocation_nodes,
    controller_address,
    load_settings,
    site_nodes,
)
from proxyflox.hpc import site_options as options_of

settings = load_settings(PbsSettings, "polaris")
address = controller_address(settings, "polaris")
python = settings.python or sys.executable
filesystems = f"#PBS -l filesystems={settings.filesystems}" if settings.filesystems else ""


def pilot_provider() -> PBSProProvider:
    """One job per site executor, kept for the whole run."""
    return PBSProProvider(
        account=settings.account,
        queue=settings.queue,
        walltime=settings.walltime,
        worker_init=settings.worker_init,
        scheduler_options="\n".join(o for o in (filesystems, settings.scheduler_options) if o),
        # One worker pool per node; it divides the node among its workers.
        launcher=MpiExecLauncher(
            bind_cmd="--cpu-bind", overrides=f"--depth={settings.cpus_per_node} --ppn 1"
        ),
        select_options=settings.select_options,
        nodes_per_block=settings.nodes,
        cpus_per_node=settings.cpus_per_node,
        init_blocks=1,
        min_blocks=1,
        max_blocks=1,
    )


def allocation_provider(node: str) -> LocalProvider:
    """One worker pool on one node of the allocation this workflow runs in."""
    return LocalProvider(
        init_blocks=1,
        min_blocks=1,
        max_blocks=1,
        worker_init=settings.worker_init,
        launcher=WrappedLauncher(
            prepend=f"mpiexec -n 1 --ppn 1 --hosts {node} --cpu-bind depth "
            f"--depth {settings.cpus_per_node}"
        ),
    )


def site_executor(label: str, provider: PBSProProvider | LocalProvider) -> HighThroughputExecutor:
    return HighThroughputExecutor(
        label=label,
        address=address,
        available_accelerators=settings.gpus_per_node,  # one worker per GPU
        max_workers_per_node=settings.gpus_per_node or 1,
        cpu_affinity=settings.cpu_affinity,  # keeps the workers' threads apart
        prefetch_capacity=0,  # few, long tasks: no prefetching
        launch_cmd=worker_launch_cmd(python),
        interchange_launch_cmd=interchange_launch_cmd(),
        # The workers read the certificates from the run directory on the shared filesystem.
        encrypted=settings.encrypted,
        provider=provider,
    )


if settings.mode == "allocation":
    sites = [
        site_executor(f"site-{i}", allocation_provider(node))
        for i, node in enumerate(site_nodes(allocation_nodes("pbs")))
    ]
else:
    sites = [site_executor(f"site-{i}", pilot_provider()) for i in range(settings.sites)]

if not settings.encrypted:
    warn_unencrypted("polaris.py: setting encrypted", sites[0].worker_port_range)
# On a login node, other users reach this machine's loopback ports too.
aggregator = local_executor("aggregator", encrypted=settings.encrypted)
config = Config(executors=[*sites, aggregator])
site_options = options_of(settings, [executor.label for executor in sites])
