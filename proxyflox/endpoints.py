"""Start and stop a local ProxyStore relay and one endpoint per executor, on this machine.

    python -m proxyflox.endpoints up [--sites 4 | --config local_htex.py] [--dir .endpoints]
    python -m proxyflox.endpoints down [--dir .endpoints]

``up`` writes ``DIR/endpoints.yaml``; run the workflow with
``--store.backend endpoint --store.endpoints_file DIR/endpoints.yaml``. Everything binds to
127.0.0.1 (``--host`` to change), the relay runs without authentication, and each endpoint has
its own ProxyStore home ``DIR/<label>`` so that several sites can share one machine. For sites on
other machines, run ``proxystore-relay`` and ``proxystore-endpoint`` there instead (README).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml
from proxystore.endpoint.config import (
    EndpointConfig,
    EndpointRelayConfig,
    EndpointRelayICEServerConfig,
    EndpointStorageConfig,
    write_config,
)

from proxyflox.errors import ConfigError
from proxyflox.sites import load_deployment
from proxyflox.stores.endpoint import read_endpoints_file, relay_host_port

BIN = Path(sys.executable).parent
MIB = 2**20
#: ``ice_servers`` that keep ProxyStore's default (public STUN servers, for peers behind NAT).
PROXYSTORE_STUN = None
ENDPOINTS_FILE = "endpoints.yaml"
#: What ``up`` created in its directory; ``down`` removes that and nothing else.
MANIFEST = "created-by-up.yaml"


def free_port(host: str) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_for_port(host: str, port: int, seconds: float, what: str) -> None:
    """Wait until something listens on ``host:port``.

    Raises:
        RuntimeError: nothing listens there within ``seconds`` (the message names ``what``).
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not start listening on {host}:{port} within {seconds:.0f}s")


def endpoint_command(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``proxystore-endpoint ARGS`` with its ProxyStore home set to ``home``."""
    return subprocess.run(
        [str(BIN / "proxystore-endpoint"), *args],
        env={**os.environ, "PROXYSTORE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
    )


def relay_command(host: str, port: int, log_dir: Path) -> list[str]:
    """``proxystore-relay`` listening on ``host:port`` without authentication."""
    return [str(BIN / "proxystore-relay"), "--host", host, "--port", str(port),
            "--log-dir", str(log_dir)]  # fmt: skip


@dataclass(frozen=True)
class EndpointOptions:
    """How ``up`` configures each endpoint.

    Attributes:
        max_object_size_mb: The largest object it holds, in MiB (``None``: ProxyStore's
            100 MB); ProxyStore's clients send any size, the endpoint's config is the limit.
        ice_servers: STUN/TURN URLs its peer connections gather candidates from. None (the
            default) uses the hosts' own addresses only: all that endpoints reaching each other
            directly need, and no peer connection waits on STUN servers out of reach.
            :data:`PROXYSTORE_STUN` keeps ProxyStore's public ones (peers behind NAT).
        peer_channels: Data channels per peer connection.
        log_level: Of the endpoint's log (``log.txt`` in its directory); at ``DEBUG`` it
            logs every request it answers for a peer, with the key and the peer.
    """

    max_object_size_mb: int | None = None
    ice_servers: tuple[str, ...] | None = ()
    peer_channels: int = 1
    log_level: str = "INFO"


def configure_endpoint(
    home: Path, label: str, host: str, port: int, relay_address: str, options: EndpointOptions
) -> str:
    """Write endpoint ``label``'s config into the ProxyStore home ``home``; return its UUID.

    What ``proxystore-endpoint configure`` writes (static address, relay without
    authentication, nothing persisted), written here: no interpreter started per endpoint, and
    fields that command has no flag for.

    Raises:
        RuntimeError: an endpoint of that name is already configured there.
    """
    endpoint_dir = home / label
    if endpoint_dir.exists():
        raise RuntimeError(f"endpoint {label} is already configured in {home}")
    storage = EndpointStorageConfig()
    if options.max_object_size_mb is not None:
        storage = EndpointStorageConfig(max_object_size=options.max_object_size_mb * MIB)
    config = EndpointConfig(
        name=label,
        uuid=str(uuid.uuid4()),
        host=host,
        host_type="static",
        port=port,
        relay=EndpointRelayConfig(
            address=relay_address,
            peer_channels=options.peer_channels,
            ice_servers=None
            if options.ice_servers is PROXYSTORE_STUN
            else [EndpointRelayICEServerConfig(urls=url) for url in options.ice_servers],
        ),
        storage=storage,
    )
    write_config(config, str(endpoint_dir))
    return config.uuid


def start_endpoints(
    homes: dict[str, Path], host: str, ports: dict[str, int], log_level: str = "INFO"
) -> None:
    """Start configured endpoints (detached), all at once; return once every one listens.

    Most of an endpoint's start is its interpreter importing ProxyStore: together they overlap.

    Raises:
        RuntimeError: one failed to start, or does not listen within 60 s.
    """
    starting = {
        label: subprocess.Popen(
            [
                str(BIN / "proxystore-endpoint"),
                "--log-level",
                log_level,
                "start",
                label,
                "--detach",
            ],
            env={**os.environ, "PROXYSTORE_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label, home in homes.items()
    }
    for label, process in starting.items():
        _, errors = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"starting endpoint {label} failed: {errors}")
    for label in homes:
        wait_for_port(host, ports[label], 60, f"endpoint {label}")


def start_endpoint(
    home: Path,
    label: str,
    host: str,
    port: int,
    relay_address: str,
    options: EndpointOptions = EndpointOptions(),  # frozen: safe as a default
) -> str:
    """Configure and start (detached) one endpoint; return its UUID once it listens.

    The endpoint ``label`` lives in the ProxyStore home ``home``, listens on ``host:port`` and
    joins the relay at ``relay_address``.

    Raises:
        RuntimeError: configuring or starting it failed, or it does not listen within 60 s.
    """
    endpoint_uuid = configure_endpoint(home, label, host, port, relay_address, options)
    start_endpoints({label: home}, host, {label: port}, options.log_level)
    return endpoint_uuid


def up(
    directory: Path,
    labels: list[str],
    host: str = "127.0.0.1",
    options: EndpointOptions = EndpointOptions(),  # frozen: safe as a default
) -> Path:
    """Start a relay and one endpoint per label; return the endpoints file.

    Each endpoint is configured by ``options``.

    Raises:
        RuntimeError: if something does not start, or ``directory`` cannot be used; whatever
            did start is stopped again.
    """
    if (directory / MANIFEST).exists() or (directory / ENDPOINTS_FILE).exists():
        raise RuntimeError(f"{directory} already has endpoints; run `down --dir {directory}` first")
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        clashes = [label for label in [*labels, "relay"] if (directory / label).exists()]
        if clashes:
            raise RuntimeError(f"{directory} already holds {', '.join(clashes)}; use a new --dir")
        manifest = {"created_dir": created, "labels": labels, "relay": None}
        _write_manifest(directory, manifest)
    except OSError as err:
        raise RuntimeError(f"--dir {directory} cannot be used: {err.strerror or err}") from None
    relay_port = free_port(host)
    relay = subprocess.Popen(
        relay_command(host, relay_port, directory / "relay"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives this command, until `down`
    )  # fmt: skip
    # The pid and the start time: a stale pid that the system gave to another process since
    # is never signalled.
    manifest["relay"] = {"pid": relay.pid, "started": psutil.Process(relay.pid).create_time()}
    _write_manifest(directory, manifest)
    relay_address = f"ws://{host}:{relay_port}"
    endpoints: dict[str, dict[str, str]] = {}
    try:
        homes = {label: directory / label for label in labels}
        ports = {label: free_port(host) for label in labels}
        for label, home in homes.items():
            endpoint_uuid = configure_endpoint(
                home, label, host, ports[label], relay_address, options
            )
            endpoints[label] = {"uuid": endpoint_uuid, "home": str(home.resolve())}
        wait_for_port(host, relay_port, 30, "proxystore-relay")
        start_endpoints(homes, host, ports, options.log_level)
    except BaseException:
        _stop(directory, manifest)
        _remove_created(directory, manifest)
        raise
    path = directory / ENDPOINTS_FILE
    path.write_text(
        "# Written by python -m proxyflox.endpoints up; removed by down.\n"
        + yaml.safe_dump(
            {
                "relay": relay_address,
                "controller_home": endpoints[labels[-1]]["home"],
                "endpoints": endpoints,
            },
            sort_keys=False,
        )
    )
    return path


def down(directory: Path) -> None:
    """Stop the endpoints and relay that ``up`` started in ``directory``; remove what it made.

    Raises:
        RuntimeError: ``directory`` was not made by ``up`` (nothing is touched then).
    """
    manifest_path = directory / MANIFEST
    try:
        manifest = yaml.safe_load(manifest_path.read_text())
    except OSError:
        raise RuntimeError(
            f"{directory} was not set up by `python -m proxyflox.endpoints up` (it has no "
            f"{MANIFEST}); nothing stopped or removed"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("labels"), list):
        raise RuntimeError(f"{manifest_path} is corrupt; nothing stopped or removed")
    _stop(directory, manifest)
    _remove_created(directory, manifest)


def _write_manifest(directory: Path, manifest: dict[str, object]) -> None:
    (directory / MANIFEST).write_text(
        "# What python -m proxyflox.endpoints up created here; down removes only this.\n"
        + yaml.safe_dump(manifest, sort_keys=False)
    )


def _stop(directory: Path, manifest: dict[str, object]) -> None:
    labels = manifest.get("labels") or []
    for label in labels if isinstance(labels, list) else []:
        if (directory / str(label) / str(label)).is_dir():
            endpoint_command(directory / str(label), "stop", str(label))
    relay = manifest.get("relay")
    if isinstance(relay, dict) and _is_our_relay(relay):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(relay["pid"]), signal.SIGTERM)


def _is_our_relay(relay: dict[str, object]) -> bool:
    """Whether the recorded pid is still the relay ``up`` started.

    Same start time and same program: not a process that got the pid later.
    """
    try:
        process = psutil.Process(int(str(relay["pid"])))
        same_start = abs(process.create_time() - float(str(relay["started"]))) < 0.01
        return same_start and "proxystore-relay" in " ".join(process.cmdline())
    except (psutil.Error, KeyError, ValueError):
        return False


def _remove_created(directory: Path, manifest: dict[str, object]) -> None:
    """Remove what ``up`` created, and nothing else.

    That is the endpoints' homes, the relay's logs, its own files, and the directory itself if
    ``up`` made it and nothing else is left in it.
    """
    labels = manifest.get("labels") or []
    for name in [*(labels if isinstance(labels, list) else []), "relay"]:
        shutil.rmtree(directory / str(name), ignore_errors=True)
    for name in (ENDPOINTS_FILE, MANIFEST):
        (directory / name).unlink(missing_ok=True)
    if manifest.get("created_dir"):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty: never what someone else put there


def main(argv: list[str] | None = None) -> int:
    """The command line: ``up`` or ``down``; returns the exit status (2 on an error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", default=".endpoints", help="where homes and logs live")
    parser.add_argument("--sites", type=int, default=4, help="site-0 .. site-N-1 and aggregator")
    parser.add_argument("--config", help="one endpoint per executor of this Parsl config instead")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind and advertise")
    parser.add_argument(
        "--max-object-size-mb", type=int, metavar="MIB",
        help="largest object an endpoint holds (default: ProxyStore's 100 MB); at least the "
        "run's store.max_object_size_mb",
    )  # fmt: skip
    parser.add_argument(
        "--stun", action="append", default=[], metavar="URL",
        help="a STUN/TURN server for peers behind NAT (repeatable; default none: peers use "
        "their own addresses, nothing waits on unreachable STUN servers)",
    )  # fmt: skip
    parser.add_argument(
        "--peer-channels", type=int, default=1, help="data channels per peer connection"
    )
    args = parser.parse_args(argv)
    directory = Path(args.dir)
    try:
        if args.action == "down":
            down(directory)
            print(f"stopped the endpoints and relay in {directory}")
            return 0
        if args.config:
            config = load_deployment(args.config).parsl_config
            labels = [e.label for e in config.executors if e.label != "aggregator"]
        else:
            if args.sites < 1:
                raise ConfigError(f"--sites: must be at least 1, got {args.sites}")
            labels = [f"site-{i}" for i in range(args.sites)]
        if args.max_object_size_mb is not None and args.max_object_size_mb < 1:
            raise ConfigError(
                f"--max-object-size-mb: must be at least 1, got {args.max_object_size_mb}"
            )
        if args.peer_channels < 1:
            raise ConfigError(f"--peer-channels: must be at least 1, got {args.peer_channels}")
        options = EndpointOptions(args.max_object_size_mb, tuple(args.stun), args.peer_channels)
        path = up(directory, [*labels, "aggregator"], host=args.host, options=options)
    except (ConfigError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    relay_host, relay_port = relay_host_port(read_endpoints_file(path).relay)
    print(f"relay on {relay_host}:{relay_port}, {len(labels) + 1} endpoints; settings:")
    print(f"  --store.backend endpoint --store.endpoints_file {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
