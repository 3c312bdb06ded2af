"""The Raspberry Pi inventory: which Pis a run uses and how to reach them, from a YAML file.

``parsl_configs/pis.py`` reads it when it is imported. The file's path comes from the
``PROXYFLOX_PIS`` environment variable (``workflows/fedavg.py --inventory FILE`` sets it), else
``parsl_configs/pis.yaml``. See ``parsl_configs/pis.example.yaml`` for every key::

    controller_address: 192.168.1.10     # this machine, as the Pis reach it
    defaults:                            # every Pi's settings unless it sets its own
      user: pi
      python: /home/pi/proxyflox/.venv/bin/python
    pis:
      pi-1: {host: 192.168.1.21, site_options: {batch_size: 1}}
      pi-2: {host: 192.168.1.22}

Every mistake raises :class:`~proxyflox.settings.ConfigError` with one line naming the file and key.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from proxyflox.errors import ConfigError, did_you_mean
from proxyflox.settings import SiteOptions, site_options_from

#: Environment variable holding the inventory's path.
INVENTORY_ENV = "PROXYFLOX_PIS"
#: Where the inventory is read from when ``PROXYFLOX_PIS`` is not set.
DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "parsl_configs" / "pis.yaml"
#: Parsl's own default: the controller listens for each Pi's worker pool on one port in here.
DEFAULT_WORKER_PORT_RANGE = (54000, 55000)
HOST_KEY_CHECKING = ("yes", "accept-new")

_TOP_KEYS = ("controller_address", "worker_port_range", "encrypted", "defaults", "pis")


@dataclass(frozen=True)
class Pi:
    """One Pi: a site executor whose worker pool is started over ``ssh``."""

    #: Executor label (the key under ``pis:``); sites are placed on it like on any executor.
    name: str
    host: str
    #: Absolute path of the Python interpreter on the Pi (its venv's ``bin/python``).
    python: str
    user: str | None = None
    port: int | None = None
    #: Private key on the controller (``ssh -i``).
    identity_file: str | None = None
    #: known_hosts file on the controller that holds the Pi's host key.
    known_hosts: str | None = None
    #: ``yes`` (default) or ``accept-new`` (record an unknown Pi's key on first contact).
    host_key_checking: str = "yes"
    #: Extra ``ssh -o`` options, ``Key=Value`` each (e.g. ``ProxyJump=gateway``).
    ssh_options: tuple[str, ...] = ()
    #: Worker logs on the Pi; a relative path is relative to the Pi user's home directory.
    worker_logdir: str = "proxyflox-logs"
    #: Worker processes on the Pi (each trains one site at a time).
    workers: int = 1
    site_options: SiteOptions = field(default_factory=SiteOptions)


@dataclass(frozen=True)
class Inventory:
    """The parsed inventory file."""

    path: Path
    #: Address of the controller that every Pi can reach (its worker pool connects back to it).
    controller_address: str
    pis: tuple[Pi, ...]
    worker_port_range: tuple[int, int] = DEFAULT_WORKER_PORT_RANGE
    #: Encrypt Parsl's traffic (CurveZMQ); needs the run directory's certificates on each Pi.
    encrypted: bool = False

    def site_options(self) -> dict[str, dict[str, Any]]:
        """``{label: {option: value}}`` in the shape a config module's ``site_options`` takes."""
        return {pi.name: pi.site_options.model_dump(exclude_none=True) for pi in self.pis}


def inventory_path() -> Path:
    """``$PROXYFLOX_PIS``, else ``parsl_configs/pis.yaml``."""
    value = os.environ.get(INVENTORY_ENV)
    return Path(value).expanduser() if value else DEFAULT_INVENTORY


def load_inventory(path: str | Path | None = None) -> Inventory:
    """Read and validate an inventory file (default: :func:`inventory_path`)."""
    path = Path(path) if path is not None else inventory_path()
    where = f"inventory {path}"
    if not path.is_file():
        raise ConfigError(
            f"{where} does not exist; write one (see parsl_configs/pis.example.yaml) and pass it "
            f"with --inventory FILE or {INVENTORY_ENV}=FILE"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must hold a mapping with keys {', '.join(_TOP_KEYS)}")
    _no_unknown_keys(where, "", data, _TOP_KEYS)

    address = data.get("controller_address")
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(
            f"{where}: controller_address: required, the address of this machine that every Pi "
            f"can reach (got {address!r})"
        )
    try:
        ipaddress.ip_address(address.strip())
    except ValueError:
        raise ConfigError(
            f"{where}: controller_address: must be an IP address (Parsl's interchange binds to "
            f"it), got {address!r}"
        ) from None
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ConfigError(f"{where}: defaults: must be a mapping of Pi settings, got {defaults!r}")
    if "host" in defaults:
        raise ConfigError(f"{where}: defaults.host: each Pi sets its own host")
    _no_unknown_keys(where, "defaults.", defaults, _PI_KEYS)
    pis_data = data.get("pis")
    if not isinstance(pis_data, Mapping) or not pis_data:
        raise ConfigError(
            f"{where}: pis: required, a mapping of Pi name to settings with at least one Pi"
        )
    pis = tuple(_pi(where, str(name), defaults, value) for name, value in pis_data.items())
    return Inventory(
        path=path.resolve(),
        controller_address=address.strip(),
        pis=pis,
        worker_port_range=_port_range(where, data.get("worker_port_range")),
        encrypted=_bool(where, "encrypted", data.get("encrypted", False)),
    )


def ssh_command(pi: Pi) -> list[str]:
    """The ``ssh`` command that runs a command on the Pi.

    ``-tt`` gives the remote command a terminal: when the controller kills ``ssh`` (block
    cancelled, run finished or interrupted) the Pi's worker pool gets SIGHUP and exits, instead of
    lingering until its heartbeat times out. ``BatchMode`` never prompts (key-based login only).
    Host-key checking is always on: ``StrictHostKeyChecking`` is ``yes`` or ``accept-new``.
    """
    command = ["ssh", "-tt", "-o", "BatchMode=yes"]
    command += ["-o", f"StrictHostKeyChecking={pi.host_key_checking}"]
    if pi.known_hosts:
        command += ["-o", f"UserKnownHostsFile={pi.known_hosts}"]
    if pi.identity_file:
        command += ["-i", pi.identity_file, "-o", "IdentitiesOnly=yes"]
    if pi.port is not None:
        command += ["-p", str(pi.port)]
    if pi.user:
        command += ["-l", pi.user]
    for option in pi.ssh_options:  # before our defaults: for ssh, the first value given wins
        command += ["-o", option]
    # A Pi that vanishes (power, network) makes ssh exit within a minute, so Parsl notices.
    command += ["-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15"]
    command += ["-o", "ServerAliveCountMax=4", pi.host]
    return command


def ssh_prepend(pi: Pi) -> str:
    """What ``WrappedLauncher(prepend=...)`` puts before the worker-pool command: a line on
    stderr naming the Pi (so an ssh failure that Parsl reports says which Pi), then
    :func:`ssh_command`."""
    target = f"{pi.user}@{pi.host}" if pi.user else pi.host
    note = shlex.quote(f"{pi.name}: starting the worker pool on {target} over ssh")
    return f"echo {note} >&2; {shlex.join(ssh_command(pi))}"


# ----------------------------------------------------------------------------------------------
# Validation

_PI_KEYS = tuple(f.name for f in fields(Pi) if f.name != "name")


def _no_unknown_keys(
    where: str, prefix: str, data: Mapping[Any, Any], known: tuple[str, ...]
) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key '{prefix}{key}'{did_you_mean(str(key), known)}; "
                f"known: {', '.join(known)}"
            )


def _pi(where: str, name: str, defaults: Mapping[str, Any], value: Any) -> Pi:
    key = f"pis.{name}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key}: must be a mapping of settings, got {value!r}")
    _no_unknown_keys(where, f"{key}.", value, _PI_KEYS)
    if name == "aggregator":
        raise ConfigError(f"{where}: {key}: 'aggregator' is the controller's own executor")
    merged = {**defaults, **value}
    # Site options merge key by key; every other setting of a Pi replaces the default's.
    layers = []
    for section, settings in (("defaults", defaults), (key, value)):
        layer = settings.get("site_options") or {}
        if not isinstance(layer, Mapping):
            raise ConfigError(f"{where}: {section}.site_options: must be a mapping, got {layer!r}")
        layers.append(layer)
    merged["site_options"] = {**layers[0], **layers[1]}

    host = _string(where, f"{key}.host", merged.get("host"), required=True)
    python = _string(where, f"{key}.python", merged.get("python"), required=True)
    if not python.startswith("/"):
        raise ConfigError(
            f"{where}: {key}.python: must be an absolute path on the Pi (a non-login ssh shell "
            f"has no venv on PATH), got {python!r}"
        )
    checking_value = merged.get("host_key_checking", "yes")
    if isinstance(checking_value, bool):  # YAML reads a bare yes/no as a boolean
        checking_value = "yes" if checking_value else "no"
    checking = _string(where, f"{key}.host_key_checking", checking_value)
    if checking not in HOST_KEY_CHECKING:
        raise ConfigError(
            f"{where}: {key}.host_key_checking: must be one of {', '.join(HOST_KEY_CHECKING)} "
            f"(host keys are always checked; add the Pi's key to known_hosts), got {checking!r}"
        )
    port = merged.get("port")
    if port is not None:
        port = _int(where, f"{key}.port", port)
        if not 0 < port < 65536:
            raise ConfigError(f"{where}: {key}.port: must be between 1 and 65535, got {port}")
    workers = _int(where, f"{key}.workers", merged.get("workers", 1))
    if workers < 1:
        raise ConfigError(f"{where}: {key}.workers: must be at least 1, got {workers}")
    options = site_options_from({"site_options": merged["site_options"]}, f"{where}: {key}")[
        "site_options"
    ]
    return Pi(
        name=name,
        host=host,
        python=python,
        user=_string(where, f"{key}.user", merged.get("user")) or None,
        port=port,
        identity_file=_local_file(where, f"{key}.identity_file", merged.get("identity_file")),
        known_hosts=_local_file(where, f"{key}.known_hosts", merged.get("known_hosts")),
        host_key_checking=checking,
        ssh_options=_ssh_options(where, f"{key}.ssh_options", merged.get("ssh_options") or []),
        worker_logdir=_string(where, f"{key}.worker_logdir", merged.get("worker_logdir"))
        or Pi.worker_logdir,
        workers=workers,
        site_options=options,
    )


def _string(where: str, key: str, value: Any, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise ConfigError(f"{where}: {key}: required")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: {key}: must be a string, got {value!r}")
    return str(value)


def _int(where: str, key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ConfigError(f"{where}: {key}: must be an integer, got {value!r}")


def _bool(where: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: {key}: must be true or false, got {value!r}")


def _local_file(where: str, key: str, value: Any) -> str | None:
    """A file on the controller (``~`` expanded), which must exist."""
    text = _string(where, key, value)
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{where}: {key}: no such file on this machine: {path}")
    return str(path.resolve())


def _ssh_options(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key}: must be a list of 'Key=Value' strings, got {value!r}")
    for option in value:
        name, sep, _ = option.partition("=")
        if not sep or not name.strip() or " " in name.strip():
            raise ConfigError(f"{where}: {key}: {option!r} is not of the form Key=Value")
        if name.strip().lower() == "stricthostkeychecking":
            raise ConfigError(
                f"{where}: {key}: set host-key checking with host_key_checking (yes or "
                f"accept-new), not {option!r}"
            )
    return tuple(value)


def _port_range(where: str, value: Any) -> tuple[int, int]:
    if value is None:
        return DEFAULT_WORKER_PORT_RANGE
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 < value[0] < value[1] < 65536
    ):
        raise ConfigError(
            f"{where}: worker_port_range: must be [low, high] with 0 < low < high < 65536, "
            f"got {value!r}"
        )
    return (value[0], value[1])
