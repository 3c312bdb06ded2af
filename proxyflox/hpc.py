"""Settings of the HPC config modules (``parsl_configs/slurm.py``, ``parsl_configs/polaris.py``).

Each module has a settings dataclass; values come from, in increasing priority: its defaults, a
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

import dataclasses
import ipaddress
import os
import subprocess
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml
from parsl.addresses import address_by_hostname, address_by_interface

from proxyflox.errors import ConfigError, did_you_mean
from proxyflox.schema import DEVICES

MODES = ("pilot", "allocation")
S = TypeVar("S")


@dataclass(frozen=True)
class SlurmSettings:
    """``parsl_configs/slurm.py``: SlurmProvider + SrunLauncher."""

    mode: str = "pilot"
    #: Site executors (pilot mode): each is one batch job of ``nodes`` nodes.
    sites: int = 1
    nodes: int = 1
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    #: Per job (HH:MM:SS); it must cover the whole run, since a site keeps its job for the run.
    walltime: str = "01:00:00"
    #: Shell lines run in the job before the worker pool (``module load ...``).
    worker_init: str = ""
    #: Extra ``#SBATCH`` lines.
    scheduler_options: str = ""
    exclusive: bool = True
    #: Worker processes per node; each trains one site at a time.
    workers_per_node: int = 1
    #: Interpreter on the compute nodes (default: the controller's, for a shared filesystem).
    python: str | None = None
    #: Controller address the compute nodes reach (default: Parsl tries all of this host's).
    address: str | None = None
    #: ... else the network interface whose address that is (e.g. ``ib0``).
    interface: str | None = None
    device: str | None = None
    torch_threads: int | None = None


@dataclass(frozen=True)
class PbsSettings:
    """``parsl_configs/polaris.py``: PBSProProvider + MpiExecLauncher, as on ALCF's Polaris."""

    mode: str = "pilot"
    sites: int = 1
    nodes: int = 1
    account: str | None = None
    queue: str = "debug"
    walltime: str = "01:00:00"
    #: Polaris requires the filesystems a job uses (``#PBS -l filesystems=...``).
    filesystems: str = "home:eagle"
    worker_init: str = ""
    scheduler_options: str = ""
    #: Appended to ``#PBS -l select=N:ncpus=C``.
    select_options: str = "ngpus=4"
    cpus_per_node: int = 64
    #: One worker per GPU, each seeing only its own (``CUDA_VISIBLE_DEVICES``); 0: one worker.
    gpus_per_node: int = 4
    cpu_affinity: str = "alternating"
    python: str | None = None
    address: str | None = None
    #: Polaris's high-speed network, whose address the compute nodes reach (unless ``address``).
    interface: str | None = "bond0"
    device: str | None = "cuda"
    torch_threads: int | None = None


def load_settings(cls: type[S], name: str, environ: Mapping[str, str] | None = None) -> S:
    """Defaults < YAML file ``$PROXYFLOX_<NAME>`` < ``$PROXYFLOX_<NAME>_<KEY>``, validated."""
    environ = os.environ if environ is None else environ
    prefix = f"PROXYFLOX_{name.upper()}"
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    data: dict[str, Any] = {}
    source: dict[str, str] = {}
    if environ.get(prefix):
        path = Path(environ[prefix]).expanduser()
        data = _read_yaml(path, prefix)
        for key in data:
            if key not in known:
                raise ConfigError(
                    f"{path}: unknown key {key!r}{did_you_mean(str(key), known)}; "
                    f"known: {', '.join(known)}"
                )
            source[key] = f"{path}: {key}"
        if isinstance(data.get("walltime"), int):  # YAML 1.1 reads 02:30:00 as 9000 (base 60)
            hours, rest = divmod(data["walltime"], 3600)
            data["walltime"] = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
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
    hints = typing.get_type_hints(cls)
    values = {key: _convert(source[key], value, hints[key]) for key, value in data.items()}
    settings = cls(**values)
    _validate(settings, source, name)
    return settings


def _read_yaml(path: Path, variable: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{variable}: settings file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{at}: {getattr(err, 'problem', '')}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(loaded).__name__}")
    return loaded


def _convert(where: str, value: Any, hint: Any) -> Any:
    """A YAML value or an environment string as ``hint`` (str, int, bool, or Optional of those)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "null", "none")):
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: must be a string, got {value!r}")
    return str(value)


def _validate(settings: Any, source: Mapping[str, str], name: str) -> None:
    def where(key: str) -> str:
        return source.get(key, f"{name} setting {key}")

    if settings.mode not in MODES:
        raise ConfigError(
            f"{where('mode')}: unknown value {settings.mode!r}"
            f"{did_you_mean(settings.mode, MODES)}; allowed: {', '.join(MODES)}"
        )
    for key in ("sites", "nodes"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"{where(key)}: must be at least 1, got {getattr(settings, key)}")
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        least = 0 if f.name == "gpus_per_node" else 1
        if f.name.endswith(("_per_node", "threads")) and value is not None and value < least:
            raise ConfigError(f"{where(f.name)}: must be at least {least}, got {value}")
    parts = settings.walltime.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ConfigError(f"{where('walltime')}: must be HH:MM:SS, got {settings.walltime!r}")
    if settings.python is not None and not settings.python.startswith("/"):
        raise ConfigError(f"{where('python')}: must be an absolute path, got {settings.python!r}")
    if settings.device is not None and settings.device.split(":", 1)[0] not in DEVICES:
        raise ConfigError(
            f"{where('device')}: unknown value {settings.device!r}; allowed: {', '.join(DEVICES)}"
        )


def controller_address(settings: Any, name: str) -> str:
    """The address the worker pools connect back to: ``address``, else the address of
    ``interface``, else what this host's name resolves to.

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
                f"{settings.interface!r} with an IPv4 address; set {variable}_INTERFACE or "
                f"{variable}_ADDRESS to what the compute nodes reach"
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


def site_options(settings: Any, labels: list[str]) -> dict[str, dict[str, Any]]:
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
