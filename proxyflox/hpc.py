"""Settings of the HPC config modules (``parsl_configs/slurm.py``, ``parsl_configs/polaris.py``).

Each module has a settings model; values come from, in increasing priority: its defaults, a
YAML file named by ``PROXYFLOX_<NAME>`` (e.g. ``PROXYFLOX_SLURM=slurm.yaml``), and environment
variables ``PROXYFLOX_<NAME>_<KEY>`` (e.g. ``PROXYFLOX_SLURM_PARTITION=debug``). A config module
cannot take arguments, so this is how a user or a batch script sets them.

Two modes:

- ``pilot`` (default): the workflow runs on a login node; Parsl submits one batch job per site
  executor and its worker pool connects back.
- ``allocation``: the workflow itself runs inside a batch job (``scripts/fedavg.sbatch``,
  ``scripts/fedavg.qsub``). The controller and the aggregator run on the allocation's first node;
  each other node runs one site executor (an allocation of a single node runs everything on it).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from parsl.addresses import address_by_hostname, address_by_interface
from pydantic import AfterValidator, BeforeValidator, Field

from proxyflox.errors import ConfigError, did_you_mean, short_repr
from proxyflox.schema import (
    Bool,
    Count,
    Device,
    Int,
    Maybe,
    Settings,
    Str,
    one_of,
    read_yaml_mapping,
    validated,
)

MODES = ("pilot", "allocation")


def _sexagesimal(value: Any) -> Any:
    # YAML 1.1 reads 02:30:00 as the integer 9000 (base 60).
    if isinstance(value, int) and not isinstance(value, bool):
        hours, rest = divmod(value, 3600)
        return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return value


def _hh_mm_ss(value: str) -> str:
    parts = value.split(":")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"must be HH:MM:SS, got {short_repr(value)}")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {short_repr(value)}")
    return value


# The last before-validator runs first: a YAML integer is turned back into HH:MM:SS before Str
# would make "9000" of it.
Walltime = Annotated[Str, AfterValidator(_hh_mm_ss), BeforeValidator(_sexagesimal)]


class BatchSettings(Settings):
    """What the settings of both batch-system config modules have."""

    mode: Annotated[Str, one_of(MODES)] = "pilot"
    #: Site executors (pilot mode): each is one batch job of ``nodes`` nodes.
    sites: Count = 1
    nodes: Count = 1
    account: Maybe[Str] = None
    #: Per job (HH:MM:SS); it must cover the whole run, since a site keeps its job for the run.
    walltime: Walltime = "01:00:00"
    #: Shell lines run in the job before the worker pool (``module load ...``).
    worker_init: Str = ""
    #: Extra scheduler lines (``#SBATCH ...``, ``#PBS ...``).
    scheduler_options: Str = ""
    #: Interpreter on the compute nodes (default: the controller's, for a shared filesystem).
    python: Maybe[Annotated[Str, AfterValidator(_absolute)]] = None
    #: Controller address the compute nodes reach (default: Parsl tries all of this host's).
    address: Maybe[Str] = None
    #: ... else the network interface whose address that is (e.g. ``ib0``).
    interface: Maybe[Str] = None
    device: Maybe[Device] = None
    torch_threads: Maybe[Count] = None
    #: Encrypt and authenticate Parsl's traffic (CurveZMQ); the workers read the run's
    #: certificates from the run directory, which must be on a filesystem they share.
    encrypted: Bool = True


class SlurmSettings(BatchSettings):
    """``parsl_configs/slurm.py``: SlurmProvider + SrunLauncher."""

    partition: Maybe[Str] = None
    qos: Maybe[Str] = None
    exclusive: Bool = True
    #: Worker processes per node; each trains one site at a time.
    workers_per_node: Count = 1


class PbsSettings(BatchSettings):
    """``parsl_configs/polaris.py``: PBSProProvider + MpiExecLauncher, as on ALCF's Polaris."""

    queue: Str = "debug"
    #: Polaris requires the filesystems a job uses (``#PBS -l filesystems=...``).
    filesystems: Str = "home:eagle"
    #: Appended to ``#PBS -l select=N:ncpus=C``.
    select_options: Str = "ngpus=4"
    cpus_per_node: Count = 64
    #: One worker per GPU, each seeing only its own (``CUDA_VISIBLE_DEVICES``); 0: one worker.
    gpus_per_node: Annotated[Int, Field(ge=0)] = 4
    cpu_affinity: Str = "alternating"
    #: Polaris's high-speed network, whose address the compute nodes reach (unless ``address``).
    interface: Maybe[Str] = "bond0"
    device: Maybe[Device] = "cuda"


S = TypeVar("S", bound=BatchSettings)


def load_settings(cls: type[S], name: str, environ: Mapping[str, str] | None = None) -> S:
    """Defaults < YAML file ``$PROXYFLOX_<NAME>`` < ``$PROXYFLOX_<NAME>_<KEY>``, validated."""
    environ = os.environ if environ is None else environ
    prefix = f"PROXYFLOX_{name.upper()}"
    known = list(cls.model_fields)
    data: dict[str, Any] = {}
    source: dict[str, str] = {}  # key -> where its value came from, as messages name it
    if environ.get(prefix):
        path = Path(environ[prefix]).expanduser()
        missing = f"{prefix}: settings file {path} does not exist"
        data = read_yaml_mapping(path, str(path), missing=missing, holds="of settings")
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"{path}: unknown key {short_repr(key)}{did_you_mean(str(key), known)}; "
                    f"known: {', '.join(known)}"
                )
            source[key] = f"{path}: {key}"
    for variable, value in environ.items():
        if not variable.startswith(f"{prefix}_"):
            continue
        key = variable.removeprefix(f"{prefix}_").lower()
        if key not in known:
            names = [f"{prefix}_{k.upper()}" for k in known]
            raise ConfigError(
                f"{variable}: not a setting{did_you_mean(variable, names)}; "
                f"known: {', '.join(names)}"
            )
        data[key] = value
        source[key] = variable
    return validated(cls, data, lambda key: source.get(key, f"{name} setting {key}"))


def controller_address(settings: BatchSettings, name: str) -> str:
    """The address the worker pools connect back to.

    ``address``, else the address of ``interface``, else what this host's name resolves to.

    Never left to Parsl's own guessing, which queries a public web service for it.
    """
    variable = f"PROXYFLOX_{name.upper()}"
    if settings.address:
        return str(settings.address)
    if settings.interface:
        try:
            return address_by_interface(settings.interface)
        except OSError:
            raise ConfigError(
                f"{variable}_INTERFACE: this machine has no network interface "
                f"{short_repr(settings.interface)} with an IPv4 address; set "
                f"{variable}_INTERFACE or {variable}_ADDRESS to what the compute nodes reach"
            ) from None
    try:
        address = address_by_hostname()
    except OSError:
        address = "127.0.0.1"
    if ipaddress.ip_address(address).is_loopback:
        raise ConfigError(
            f"this host's name resolves to {address}, which compute nodes cannot reach; set "
            f"{variable}_ADDRESS or {variable}_INTERFACE (e.g. ib0)"
        )
    return address


def site_options(settings: BatchSettings, labels: list[str]) -> dict[str, dict[str, Any]]:
    """The settings' ``device`` and ``torch_threads`` for every site executor."""
    options = {
        key: getattr(settings, key)
        for key in ("device", "torch_threads")
        if getattr(settings, key) is not None
    }
    return {label: dict(options) for label in labels}


# ----------------------------------------------------------------------------------------------
# Inside an allocation


def allocation_nodes(scheduler: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Host names of the batch job this process runs in, first node first, each once.

    Raises:
        ConfigError: when not inside a job of ``scheduler`` (``slurm`` or ``pbs``).
    """
    environ = os.environ if environ is None else environ
    if scheduler == "slurm":
        nodelist = environ.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise ConfigError(
                "mode allocation: not inside a Slurm job (SLURM_JOB_NODELIST is not set); "
                "submit scripts/fedavg.sbatch with sbatch, or use mode pilot"
            )
        done = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise ConfigError(f"scontrol show hostnames {nodelist} failed: {done.stderr.strip()}")
        names = done.stdout.split()
    elif scheduler == "pbs":
        nodefile = environ.get("PBS_NODEFILE")
        if not nodefile:
            raise ConfigError(
                "mode allocation: not inside a PBS job (PBS_NODEFILE is not set); submit "
                "scripts/fedavg.qsub with qsub, or use mode pilot"
            )
        names = Path(nodefile).read_text().split()
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}")
    unique = list(dict.fromkeys(names))  # PBS lists a node once per rank
    if not unique:
        raise ConfigError(f"mode allocation: the {scheduler} job lists no nodes")
    return unique


def site_nodes(nodes: list[str]) -> list[str]:
    """Nodes that run a site: all but the controller's first node (or it, if it is alone)."""
    return nodes[1:] or nodes[:1]
