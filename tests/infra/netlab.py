"""A network lab: the hosts of a topology file, each in a network namespace, joined by
rate-limited links, with bytes counted on every link.

A topology (YAML, e.g. ``benchmarks/topologies/t2.yaml``)::

    name: t2
    description: Pis on WiFi
    switches: [home]                      # each one a Linux bridge
    hosts:                                # role: controller, aggregator, site, group, store
      controller: {role: controller}
      site-0: {role: site}
    links:                                # a veth pair, limited both ways by tbf
      controller: {ends: [controller, home]}            # no rate: unlimited
      wifi-0: {ends: [site-0, home], rate: 25mbit}

Every host has exactly one link, and the hosts and switches form a tree: one Ethernet segment,
one /24 of 198.18.0.0/15 (RFC 2544, reserved for network tests), no routing. The bridges and the
switch ends of the links live in one more namespace of the lab's own, so nothing of the lab is in
this machine's own network namespace: its traffic stays inside namespaces the lab created, and
every byte a host sends or receives crosses its link. IPv6 is off in the lab (no router
solicitations or multicast reports in the byte counts).

A ``site``, ``group`` or ``aggregator`` host runs a real ``sshd`` (a ``group`` host is the group
aggregator of an aggregator tree, e.g. a lab's workstation), and :meth:`NetLab.write_inventory`
writes the inventory for ``parsl_configs/pis.py``: each worker pool is started by the controller
over ``ssh -tt``, as on real Raspberry Pis. That path was chosen over a launcher that enters the
namespace (``ip netns exec`` in a ``WrappedLauncher``) because it is the one users run and the
tests of ``pis.py`` already prove, it needs no Parsl config of the lab's own, and ``ssh -tt``
already ends a pool with its controller; the ssh session's own bytes are part of what a real
deployment sends, so counting them is right. The ``store`` host runs redis-server and the
ProxyStore relay (:meth:`NetLab.start_redis`, :meth:`NetLab.start_endpoints`); every other host
gets its own endpoint. The controller runs inside its host too (:meth:`NetLab.command`).

Use :class:`NetLab` as a context manager: leaving it, also on an error or Ctrl-C, stops every
process in the lab's namespaces and deletes them (their veths and bridges go with them); a lab
left by a killed test process is removed by the next one (:func:`~tests.infra.netns.
remove_stale_namespaces`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator

from proxyflox.endpoints import relay_command, start_endpoint
from proxyflox.errors import ConfigError, did_you_mean
from proxyflox.schema import Maybe, Settings, Str, one_of, read_yaml_mapping, validated
from tests.helpers import CLI, bare_env
from tests.infra.common import ClosedOnExit, run_workflow, stop_pids, stop_process, wait_for
from tests.infra.netns import (
    NAME_PREFIX,
    TEST_NETWORK,
    free_subnet,
    in_namespace,
    ip,
    keygen,
    namespace_commands,
    namespace_pids,
    remove_namespace,
    remove_stale_namespaces,
    require_netns_tools,
    start_sshd,
    write_inventory,
)
from tests.servers import redis_command, wait_for_redis

ROLES = ("controller", "aggregator", "site", "group", "store")
#: Roles whose host runs Parsl workers, started over ssh.
SSH_ROLES = ("aggregator", "site", "group")
REDIS_PORT, RELAY_PORT, ENDPOINT_PORT = 6379, 8700, 8765
#: The interface of a host on its link (each host is a namespace of its own).
HOST_INTERFACE = "eth0"
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


def rate_bits(rate: str) -> int:
    """``"25mbit"`` -> 25_000_000 (bits per second, as ``tc`` reads the unit)."""
    match = _RATE.match(rate)
    if match is None:
        raise ValueError(f"must be a rate such as 25mbit or 1gbit, got {rate!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _rate(value: str) -> str:
    if rate_bits(value) <= 0:
        raise ValueError(f"must be above 0, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# The topology file


class HostSpec(Settings):
    """One host: what runs there."""

    role: Annotated[Str, one_of(ROLES)]


class LinkSpec(Settings):
    """One link between two nodes (hosts or switches), limited to ``rate`` each way."""

    ends: tuple[Str, Str]
    #: e.g. ``25mbit``, ``1gbit``; none: unlimited.
    rate: Maybe[Annotated[Str, AfterValidator(_rate)]] = None

    @property
    def bits_per_second(self) -> int | None:
        """The rate limit, ``None`` for none."""
        return rate_bits(self.rate) if self.rate else None


class Topology(Settings):
    """Hosts and switches, and the links between them."""

    name: Str
    description: Str = ""
    switches: tuple[Str, ...] = ()
    hosts: dict[Str, HostSpec]
    links: dict[Str, LinkSpec]

    def role(self, role: str) -> list[str]:
        """The names of the hosts with this role, in file order."""
        return [name for name, host in self.hosts.items() if host.role == role]

    def link_of(self, host: str) -> str:
        """The name of the host's one link."""
        return next(name for name, link in self.links.items() if host in link.ends)


def load_topology(path: str | Path) -> Topology:
    """Read and check a topology file; every mistake is a one-line :class:`ConfigError`."""
    path = Path(path)
    where = f"topology {path}"
    data = read_yaml_mapping(path, where, holds="with keys name, switches, hosts, links")
    topology = validated(Topology, data, where)
    _check_graph(where, topology)
    return topology


def _check_graph(where: str, topology: Topology) -> None:
    nodes = [*topology.hosts, *topology.switches]
    if len(topology.hosts) > 253:  # one /24, no routing
        raise ConfigError(f"{where}: hosts: at most 253, got {len(topology.hosts)}")
    clash = set(topology.hosts) & set(topology.switches)
    if clash:
        raise ConfigError(f"{where}: switches: {sorted(clash)[0]!r} is also a host")
    for role, wanted in (("controller", 1), ("aggregator", 1)):
        if len(topology.role(role)) != wanted:
            raise ConfigError(f"{where}: hosts: needs exactly one host with role {role}")
    if not topology.role("site"):
        raise ConfigError(f"{where}: hosts: needs at least one host with role site")
    if len(topology.role("store")) > 1:
        raise ConfigError(f"{where}: hosts: at most one host with role store")
    for name, link in topology.links.items():
        for end in link.ends:
            if end not in nodes:
                raise ConfigError(
                    f"{where}: links.{name}.ends: unknown host or switch {end!r}"
                    f"{did_you_mean(end, nodes)}"
                )
        if link.ends[0] == link.ends[1]:
            raise ConfigError(f"{where}: links.{name}.ends: a link joins two different nodes")
    for host in topology.hosts:
        count = sum(host in link.ends for link in topology.links.values())
        if count != 1:
            raise ConfigError(
                f"{where}: hosts.{host}: needs exactly one link (has {count}); join hosts "
                "through a switch"
            )
    # A tree: one segment, and no loop for the bridges to forward frames around.
    if len(topology.links) != len(nodes) - 1 or not _connected(nodes, topology):
        raise ConfigError(
            f"{where}: links: hosts and switches must form a tree (every node reachable, no loop)"
        )


def _connected(nodes: list[str], topology: Topology) -> bool:
    reached, todo = {nodes[0]}, [nodes[0]]
    while todo:
        node = todo.pop()
        for link in topology.links.values():
            if node in link.ends:
                other = link.ends[1] if link.ends[0] == node else link.ends[0]
                if other not in reached:
                    reached.add(other)
                    todo.append(other)
    return len(reached) == len(nodes)


# ----------------------------------------------------------------------------------------------
# The lab


@dataclass
class LabHost:
    """A host of the lab: a namespace with one interface at ``address``."""

    name: str
    role: str
    namespace: str
    address: str
    link: str
    sshd: subprocess.Popen[bytes] | None = None


@dataclass(frozen=True)
class LinkEnd:
    """Where a link's bytes are read: an interface in a namespace; ``tx`` is the link's
    ``a_to_b`` direction when ``flipped`` is false."""

    namespace: str
    interface: str
    flipped: bool


@dataclass(frozen=True)
class Traffic:
    """Bytes that crossed one link each way, as its interfaces count them (Ethernet frames).

    ``a_to_b`` is from the link's first end (as the topology lists ``ends``) to its second.
    """

    a_to_b: int
    b_to_a: int

    @property
    def total(self) -> int:
        """Both ways."""
        return self.a_to_b + self.b_to_a

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.a_to_b - other.a_to_b, self.b_to_a - other.b_to_a)


def read_counters(ends: Mapping[str, LinkEnd]) -> dict[str, Traffic]:
    """Bytes that crossed each link so far, by link name, read at ``ends``
    (:attr:`NetLab.link_ends`); works from inside any namespace of the lab too."""
    stats: dict[str, dict[str, Any]] = {}
    for namespace in {end.namespace for end in ends.values()}:
        listed = subprocess.run(
            ["ip", "-n", namespace, "-j", "-s", "link", "show"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        for entry in json.loads(listed.stdout):
            stats[f"{namespace}/{entry['ifname']}"] = entry["stats64"]
    counts = {}
    for name, end in ends.items():
        entry = stats[f"{end.namespace}/{end.interface}"]
        tx, rx = int(entry["tx"]["bytes"]), int(entry["rx"]["bytes"])
        counts[name] = Traffic(rx, tx) if end.flipped else Traffic(tx, rx)
    return counts


def traffic_since(
    before: Mapping[str, Traffic], after: Mapping[str, Traffic]
) -> dict[str, Traffic]:
    """Bytes per link between two :meth:`NetLab.counters` readings."""
    return {name: after[name] - before[name] for name in after}


class NetLab(ClosedOnExit):
    """The hosts of ``topology`` in namespaces, with sshd where workers run.

    Args:
        topology: The topology, or the path of its file.
        workdir: Keys, sshd and server files, worker logs (made if absent).
    """

    def __init__(self, topology: Topology | str | Path, workdir: Path) -> None:
        require_netns_tools()
        self.topology = topology if isinstance(topology, Topology) else load_topology(topology)
        self.workdir = workdir
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.hosts: dict[str, LabHost] = {}
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.client_key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self._ends: dict[str, LinkEnd] = {}
        self._index = 0
        self._subnet = TEST_NETWORK
        self._fabric = ""
        self._redis_on: set[str] = set()
        try:
            self._build()
        except BaseException:  # Ctrl-C included: remove what was made so far
            self.close()
            raise

    def _build(self) -> None:
        remove_stale_namespaces()
        self._index, self._subnet = _free_index()
        self._fabric = self._namespace(0)
        for i in range(len(self.topology.switches)):
            ip("-n", self._fabric, "link", "add", _bridge(i), "type", "bridge")
            ip("-n", self._fabric, "link", "set", _bridge(i), "up")
        for k, (name, spec) in enumerate(self.topology.hosts.items(), start=1):
            host = LabHost(
                name=name,
                role=spec.role,
                namespace=self._namespace(k),
                address=str(self._subnet.network_address + k),
                link=self.topology.link_of(name),
            )
            self.hosts[name] = host
        for j, (name, link) in enumerate(self.topology.links.items()):
            self._add_link(j, name, link)
        if any(host.role in SSH_ROLES for host in self.hosts.values()):
            keygen(self.client_key)
            self.known_hosts.write_text("")
            for host in self.hosts.values():
                if host.role in SSH_ROLES:
                    host.sshd, _ = start_sshd(
                        self.workdir / f"sshd-{host.name}",
                        host.namespace,
                        host.address,
                        self.client_key,
                        self.known_hosts,
                    )
                    self.processes.append(host.sshd)

    def _namespace(self, k: int) -> str:
        """Create the lab's namespace number ``k`` (named so that stale cleanup finds it)."""
        name = f"{NAME_PREFIX}{os.getpid()}-{self._index}-{k}"
        self.namespaces.append(name)  # before creating it, so close() removes a partial setup
        ip("netns", "add", name)
        # Off before any interface exists, so none gets an IPv6 address.
        in_namespace(name, _no_ipv6)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def _add_link(self, j: int, name: str, link: LinkSpec) -> None:
        """A veth pair from ``ends[0]`` to ``ends[1]``: a host's end is its ``eth0``, a
        switch's end is enslaved to its bridge; both ends shaped to the link's rate."""
        places = [self._place(j, side, end) for side, end in zip("ab", link.ends, strict=True)]
        (a_ns, a_if), (b_ns, b_if) = places
        ip("-n", a_ns, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b_ns)
        for end, (namespace, interface) in zip(link.ends, places, strict=True):
            if end in self.hosts:
                ip(
                    "-n",
                    namespace,
                    "addr",
                    "add",
                    f"{self.hosts[end].address}/24",
                    "dev",
                    interface,
                )
            else:
                bridge = _bridge(self.topology.switches.index(end))
                ip("-n", namespace, "link", "set", interface, "master", bridge)
            ip("-n", namespace, "link", "set", interface, "up")
            if link.bits_per_second:
                _shape(namespace, interface, link.bits_per_second)
        # Read each link in the lab's own namespace where it has an end there: one `ip` call
        # then reads nearly every link.
        if b_ns == self._fabric:
            self._ends[name] = LinkEnd(b_ns, b_if, flipped=True)
        else:
            self._ends[name] = LinkEnd(a_ns, a_if, flipped=False)

    def _place(self, j: int, side: str, end: str) -> tuple[str, str]:
        if end in self.hosts:
            return self.hosts[end].namespace, HOST_INTERFACE
        return self._fabric, f"l{j}{side}"

    def close(self) -> None:
        """Stop every process in the lab and delete its namespaces (with their links)."""
        errors = []
        for process in self.processes:
            try:
                stop_process(process)
            except Exception as err:  # keep tearing down the rest
                errors.append(f"{process.args!r}: {err}")
        # All at once: endpoints take a while to stop, and each namespace would wait for its own.
        stop_pids(pid for namespace in self.namespaces for pid in namespace_pids(namespace))
        for namespace in reversed(self.namespaces):
            try:
                remove_namespace(namespace, host_link="")
            except Exception as err:
                errors.append(f"{namespace}: {err}")
        self.namespaces.clear()
        self.processes.clear()
        if errors:
            raise RuntimeError("teardown failed: " + "; ".join(errors))

    # -- using it

    @property
    def controller(self) -> LabHost:
        """The controller's host."""
        return self.hosts[self.topology.role("controller")[0]]

    @property
    def controller_address(self) -> str:
        """Where the workers connect back to (Parsl's interchanges listen there)."""
        return self.controller.address

    @property
    def store(self) -> LabHost:
        """The store servers' host."""
        names = self.topology.role("store")
        if not names:
            raise ValueError(f"topology {self.topology.name} has no store host")
        return self.hosts[names[0]]

    def sites(self) -> list[LabHost]:
        """The site hosts, in file order."""
        return [self.hosts[name] for name in self.topology.role("site")]

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host``."""
        return ["ip", "netns", "exec", self.hosts[host].namespace, *argv]

    def start(self, host: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host`` (output to ``log``); it is stopped with the lab."""
        with open(log, "wb") as out:
            process = subprocess.Popen(
                self.command(host, argv), stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def counters(self) -> dict[str, Traffic]:
        """Bytes that crossed each link so far, by link name."""
        return read_counters(self._ends)

    @property
    def link_ends(self) -> dict[str, LinkEnd]:
        """Where each link's bytes are read (for :func:`read_counters` in another process,
        e.g. one running inside a host)."""
        return dict(self._ends)

    def send(self, source: str, target: str, size: int, port: int = 9000) -> float:
        """Send ``size`` bytes over TCP from host ``source`` to host ``target``; returns the
        seconds from the first byte sent until the receiver has them all (one clock, here)."""
        destination = (self.hosts[target].address, port)
        server = in_namespace(
            self.hosts[target].namespace, lambda: socket.create_server(destination)
        )
        received: list[int] = []

        def receive() -> None:
            connection, _ = server.accept()
            with connection:
                count = 0
                while chunk := connection.recv(1 << 16):
                    count += len(chunk)
                received.append(count)
                connection.sendall(b"k")  # the sender's clock stops when all has arrived

        def transmit() -> float:
            with socket.create_connection(destination) as sending:
                start = time.perf_counter()
                block = bytes(1 << 20)
                for offset in range(0, size, len(block)):
                    sending.sendall(block[: min(len(block), size - offset)])
                sending.shutdown(socket.SHUT_WR)
                sending.recv(1)
                return time.perf_counter() - start

        with server:
            receiver = threading.Thread(target=receive)
            receiver.start()
            try:
                seconds = in_namespace(self.hosts[source].namespace, transmit)
            finally:
                receiver.join(timeout=60)
        if received != [size]:
            raise RuntimeError(f"{target} received {received} of {size} bytes")
        return seconds

    def run_fedavg(
        self, args: list[str], workdir: Path, timeout: float = 300
    ) -> tuple[subprocess.CompletedProcess[str], dict[str, Traffic]]:
        """``workflows/fedavg.py`` on ``pis.py`` from the controller's host, its sites and
        aggregator on theirs; returns how it ended and the bytes each link carried.

        The bytes are counted once the worker pools have exited with their ssh sessions.
        """
        inventory = self.write_inventory(workdir / "pis.yaml")
        command = [sys.executable, str(CLI), "--config", "pis.py", "--inventory",
                   str(inventory), *args]  # fmt: skip
        before = self.counters()
        done = run_workflow(self.command("controller", command), cwd=workdir, env=bare_env(),
                            timeout=timeout)  # fmt: skip

        def pools() -> list[str]:
            return [
                command
                for host in self.hosts.values()
                for command in namespace_commands(host.namespace)
                if "process_worker_pool" in command
            ]

        wait_for("the worker pools to exit", lambda: not pools(), timeout=30, interval=0.5)
        return done, traffic_since(before, self.counters())

    def write_inventory(self, path: Path) -> Path:
        """The inventory for ``parsl_configs/pis.py``: every site host a Pi (its name the
        executor label), then every group host, the aggregator's host the aggregator.

        The sites come first, in file order: a run places site i on the i-th executor."""
        (aggregator,) = (h for h in self.hosts.values() if h.role == "aggregator")
        groups = [self.hosts[name] for name in self.topology.role("group")]
        return write_inventory(
            path,
            self,
            {host.name: {"host": host.address} for host in [*self.sites(), *groups]},
            aggregator={"host": aggregator.address},
        )

    def start_redis(self, host: str | None = None) -> tuple[str, int]:
        """redis-server on ``host`` (default: the store host), started once per host; returns
        its address and port."""
        server = self.store if host is None else self.hosts[host]
        if server.name in self._redis_on:
            return server.address, REDIS_PORT
        self._redis_on.add(server.name)
        process = self.start(
            server.name,
            redis_command(REDIS_PORT, host=server.address),
            self.workdir / f"redis-{server.name}.log",
        )
        in_namespace(server.namespace, lambda: wait_for_redis(process, server.address, REDIS_PORT))
        return server.address, REDIS_PORT

    def start_endpoints(self) -> Path:
        """The ProxyStore relay on the store host and an endpoint on every other host (the
        controller's too); returns the endpoints file (``store.endpoints_file``).

        Each endpoint runs in its host's namespace, with its ProxyStore home under
        ``workdir/endpoints``: the sites' and the aggregator's by executor label, the
        controller's as ``controller_home``. Started once: a second call returns the same file.
        """
        store = self.store
        directory = self.workdir / "endpoints"
        if (directory / "endpoints.yaml").exists():
            return directory / "endpoints.yaml"
        directory.mkdir()
        relay = f"ws://{store.address}:{RELAY_PORT}"
        self.start(
            store.name,
            relay_command(store.address, RELAY_PORT, directory / "relay"),
            self.workdir / "relay.log",
        )
        hosts = [h for h in self.hosts.values() if h.role != "store"]

        def start_one(host: LabHost) -> str:
            home = directory / host.name
            return in_namespace(
                host.namespace,
                lambda: start_endpoint(home, host.name, host.address, ENDPOINT_PORT, relay),
            )

        # Each endpoint's start is mostly Python importing ProxyStore: start them together.
        with ThreadPoolExecutor(len(hosts)) as pool:
            uuids = dict(zip((h.name for h in hosts), pool.map(start_one, hosts), strict=True))
        endpoints: dict[str, dict[str, str]] = {}
        for host in hosts:
            entry = {"uuid": uuids[host.name]}
            if host.role != "controller":  # the controller's home is controller_home
                entry["home"] = str(directory / host.name)
            endpoints["aggregator" if host.role == "aggregator" else host.name] = entry
        path = directory / "endpoints.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "relay": relay,
                    "controller_home": str(directory / self.controller.name),
                    "endpoints": endpoints,
                },
                sort_keys=False,
            )
        )
        return path


def _no_ipv6() -> None:
    """Turn IPv6 off in the calling thread's namespace (``/proc/sys/net`` is the reader's)."""
    for scope in ("all", "default"):
        switch = Path(f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6")
        if switch.exists():  # a kernel without IPv6 has nothing to turn off
            switch.write_text("1")


def _bridge(i: int) -> str:
    return f"s{i}"


def _shape(namespace: str, interface: str, bits: int) -> None:
    """A token bucket on the interface's egress: ``bits`` per second, bursts of 64 KiB or 10 ms
    of the rate (a smaller bucket cannot keep a fast link busy)."""
    burst = max(64 * 1024, bits // 8 // 100)
    done = subprocess.run(
        ["tc", "-n", namespace, "qdisc", "add", "dev", interface, "root", "tbf",
         "rate", f"{bits}bit", "burst", str(burst), "latency", "50ms"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"tc on {interface} in {namespace} failed: {done.stderr.strip()}")


def _free_index() -> tuple[int, ipaddress.IPv4Network]:
    """A lab number that no namespace of this process uses yet, and its /24: one that no
    interface of this machine's own namespace uses either (so that the lab's addresses never
    stand for a host outside it)."""
    while True:
        index, subnet = free_subnet()
        if not list(Path("/run/netns").glob(f"{NAME_PREFIX}{os.getpid()}-{index}-*")):
            return index, subnet
