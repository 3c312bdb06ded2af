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
    aggregator: {host: 192.168.1.30}     # optional: else it runs on this machine

Every mistake raises :class:`~proxyflox.errors.ConfigError` with one line naming the file and key.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from proxyflox.errors import ConfigError, did_you_mean, short_repr
from proxyflox.schema import Bool, Count, Int, Maybe, Settings, Str, read_yaml_mapping, validated
from proxyflox.settings import SiteOptions

#: Environment variable holding the inventory's path.
INVENTORY_ENV = "PROXYFLOX_PIS"
#: Where the inventory is read from when ``PROXYFLOX_PIS`` is not set.
DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "parsl_configs" / "pis.yaml"
#: Parsl's own default: the controller listens for each Pi's worker pool on one port in here.
DEFAULT_WORKER_PORT_RANGE = (54000, 55000)
HOST_KEY_CHECKING = ("yes", "accept-new")

_TOP_KEYS = (
    "controller_address", "worker_port_range", "encrypted", "defaults", "pis", "aggregator"
)  # fmt: skip


def _python_on_the_pi(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(
            "must be an absolute path on the Pi (a non-login ssh shell has no venv on PATH), "
            f"got {short_repr(value)}"
        )
    return value


def _local_file(value: str) -> str:
    """A file on the controller (``~`` expanded), which must exist."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file on this machine: {path}")
    return str(path.resolve())


def _yaml_yes_no(value: Any) -> Any:
    # YAML reads a bare yes/no as a boolean.
    return ("yes" if value else "no") if isinstance(value, bool) else value


def _host_key_checking(value: str) -> str:
    if value not in HOST_KEY_CHECKING:
        raise ValueError(
            f"must be one of {', '.join(HOST_KEY_CHECKING)} (host keys are always checked; add "
            f"the Pi's key to known_hosts), got {short_repr(value)}"
        )
    return value


def _ssh_options(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of 'Key=Value' strings, got {short_repr(value)}")
    for option in value:
        name, sep, _ = option.partition("=")
        if not sep or not name.strip() or " " in name.strip():
            raise ValueError(f"{short_repr(option)} is not of the form Key=Value")
        if name.strip().lower() == "stricthostkeychecking":
            raise ValueError(
                "set host-key checking with host_key_checking (yes or accept-new), not "
                f"{short_repr(option)}"
            )
    return tuple(value)


LocalFile = Annotated[Str, AfterValidator(_local_file)]


class Pi(Settings):
    """One Pi: a site executor whose worker pool is started over ``ssh``."""

    #: Executor label (the key under ``pis:``); sites are placed on it like on any executor.
    name: Str
    host: Str
    #: Absolute path of the Python interpreter on the Pi (its venv's ``bin/python``).
    python: Annotated[Str, AfterValidator(_python_on_the_pi)]
    user: Maybe[Str] = None
    port: Maybe[Annotated[Int, Field(ge=1, le=65535)]] = None
    #: Private key on the controller (``ssh -i``).
    identity_file: Maybe[LocalFile] = None
    #: known_hosts file on the controller that holds the Pi's host key.
    known_hosts: Maybe[LocalFile] = None
    #: ``yes`` (default) or ``accept-new`` (record an unknown Pi's key on first contact).
    host_key_checking: Annotated[
        Str, AfterValidator(_host_key_checking), BeforeValidator(_yaml_yes_no)
    ] = "yes"
    #: Extra ``ssh -o`` options, ``Key=Value`` each (e.g. ``ProxyJump=gateway``).
    ssh_options: Annotated[tuple[str, ...], BeforeValidator(_ssh_options)] = ()
    #: Worker logs on the Pi; a relative path is relative to the Pi user's home directory.
    worker_logdir: Str = "proxyflox-logs"
    #: Worker processes on the Pi (each trains one site at a time).
    workers: Count = 1
    site_options: SiteOptions = SiteOptions()


def _controller_address(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            "required, the address of this machine that every Pi can reach "
            f"(got {short_repr(value)})"
        )
    try:
        ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(
            f"must be an IP address (Parsl's interchange binds to it), got {short_repr(value)}"
        ) from None
    return value.strip()


def _port_range(value: Any) -> Any:
    if value is None:
        return DEFAULT_WORKER_PORT_RANGE
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not 0 < value[0] < value[1] < 65536
    ):
        raise ValueError(
            f"must be [low, high] with 0 < low < high < 65536, got {short_repr(value)}"
        )
    return tuple(value)


class Inventory(Settings):
    """The parsed inventory file."""

    path: Path
    #: Address of the controller that every Pi can reach (its worker pool connects back to it).
    controller_address: Annotated[str, BeforeValidator(_controller_address)]
    pis: tuple[Pi, ...]
    worker_port_range: Annotated[tuple[int, int], BeforeValidator(_port_range)] = (
        DEFAULT_WORKER_PORT_RANGE
    )
    #: Encrypt and authenticate Parsl's traffic (CurveZMQ); the launcher copies the run's
    #: certificates to each Pi (see :mod:`proxyflox.pi_launcher`). ``false`` warns.
    encrypted: Bool = True
    #: The machine whose worker pool runs the aggregator's apps, started over ssh like a Pi's
    #: (label ``aggregator``); ``None``: a worker pool on the controller's machine.
    aggregator: Pi | None = None

    def site_options(self) -> dict[str, dict[str, Any]]:
        """``{label: {option: value}}`` in the shape a config module's ``site_options`` takes."""
        return {pi.name: pi.site_options.model_dump(exclude_none=True) for pi in self.pis}


_PI_KEYS = tuple(name for name in Pi.model_fields if name != "name")


def inventory_path() -> Path:
    """``$PROXYFLOX_PIS``, else ``parsl_configs/pis.yaml``."""
    value = os.environ.get(INVENTORY_ENV)
    return Path(value).expanduser() if value else DEFAULT_INVENTORY


def load_inventory(path: str | Path | None = None) -> Inventory:
    """Read and validate an inventory file (default: :func:`inventory_path`)."""
    path = Path(path) if path is not None else inventory_path()
    where = f"inventory {path}"
    data = read_yaml_mapping(
        path,
        where,
        missing=f"{where} does not exist; write one (see parsl_configs/pis.example.yaml) and "
        f"pass it with --inventory FILE or {INVENTORY_ENV}=FILE",
        holds=f"with keys {', '.join(_TOP_KEYS)}",
    )
    _no_unknown_keys(where, "", data, _TOP_KEYS)
    defaults = data.pop("defaults", None) or {}
    if not isinstance(defaults, Mapping):
        raise ConfigError(
            f"{where}: defaults: must be a mapping of Pi settings, got {short_repr(defaults)}"
        )
    if "host" in defaults:
        raise ConfigError(f"{where}: defaults.host: each Pi sets its own host")
    _no_unknown_keys(where, "defaults.", defaults, _PI_KEYS)
    pis = data.get("pis")
    if not isinstance(pis, Mapping) or not pis:
        raise ConfigError(
            f"{where}: pis: required, a mapping of Pi name to settings with at least one Pi"
        )
    data["pis"] = tuple(_pi(where, str(name), defaults, value) for name, value in pis.items())
    if data.get("aggregator") is not None:
        data["aggregator"] = _aggregator(where, defaults, data["aggregator"])
    data["controller_address"] = data.get("controller_address")  # "required" says what it is
    return validated(Inventory, {**data, "path": path.resolve()}, lambda key: f"{where}: {key}")


def ssh_command(pi: Pi, terminal: bool = True) -> list[str]:
    """The ``ssh`` command that runs a command on the Pi.

    ``-tt`` (``terminal``) gives the remote command a terminal: when the controller kills ``ssh``
    (block cancelled, run finished or interrupted) the Pi's worker pool gets SIGHUP and exits,
    instead of lingering until its heartbeat times out. Without it, the remote command reads
    ``ssh``'s stdin as it is (a file to copy). ``BatchMode`` never prompts (key-based login
    only). Host-key checking is always on: ``StrictHostKeyChecking`` is ``yes`` or
    ``accept-new``.
    """
    command = ["ssh", "-tt"] if terminal else ["ssh"]
    command += ["-o", "BatchMode=yes"]
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


def ssh_note(pi: Pi) -> str:
    """A shell line saying on stderr which Pi is being started.

    An ssh failure that Parsl reports then names the Pi.
    """
    target = f"{pi.user}@{pi.host}" if pi.user else pi.host
    return f"echo {shlex.quote(f'{pi.name}: starting the worker pool on {target} over ssh')} >&2"


def ssh_prepend(pi: Pi) -> str:
    """What ``WrappedLauncher(prepend=...)`` puts before the worker-pool command.

    :func:`ssh_note`, then :func:`ssh_command`.
    """
    return f"{ssh_note(pi)}; {shlex.join(ssh_command(pi))}"


# ----------------------------------------------------------------------------------------------
# Validation


def _no_unknown_keys(
    where: str, prefix: str, data: Mapping[Any, Any], known: tuple[str, ...]
) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key '{prefix}{key}'{did_you_mean(str(key), known)}; "
                f"known: {', '.join(known)}"
            )


def _aggregator(where: str, defaults: Mapping[str, Any], value: Any) -> Pi:
    if isinstance(value, Mapping) and "site_options" in value:
        raise ConfigError(f"{where}: aggregator.site_options: the aggregator trains no site")
    return _pi(where, "aggregator", defaults, value, key="aggregator")


def _pi(
    where: str, name: str, defaults: Mapping[str, Any], value: Any, key: str | None = None
) -> Pi:
    key = key or f"pis.{name}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {key}: must be a mapping of settings, got {short_repr(value)}")
    _no_unknown_keys(where, f"{key}.", value, _PI_KEYS)
    if key == "pis.aggregator":
        raise ConfigError(
            f"{where}: {key}: 'aggregator' is the aggregator's executor (set its host under "
            "the top-level key aggregator)"
        )
    # Site options merge key by key; every other setting of a Pi replaces the default's.
    layers = []
    for section, settings in (("defaults", defaults), (key, value)):
        layer = settings.get("site_options") or {}
        if not isinstance(layer, Mapping):
            raise ConfigError(
                f"{where}: {section}.site_options: must be a mapping, got {short_repr(layer)}"
            )
        layers.append(layer)
    merged = {**defaults, **value, "name": name, "site_options": {**layers[0], **layers[1]}}
    # An empty setting is one not given: its default applies, or it is "required".
    given = {k: v for k, v in merged.items() if v is not None and v != ""}
    return validated(Pi, given, f"{where}: {key}")
