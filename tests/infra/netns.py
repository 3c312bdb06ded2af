"""Fake Raspberry Pis: network namespaces joined to this host by veth pairs, each with its own
address and a real ``sshd`` that accepts a key made for the test.

Addresses come only from 198.18.0.0/15 (RFC 2544, reserved for network tests). Namespace *k*
gets a /30: the host side of its veth is ``.4k+1``, the "Pi" is ``.4k+2``, and its only route is
198.18.0.0/15 via the host. IP forwarding stays off, so the namespaces reach this host and
nothing else. The controller address (what the Pis connect back to) is the first host side.

Use :class:`NetnsLab` as a context manager: leaving it (also on an error or a failed test) stops
every process inside the namespaces and deletes them and their veth pairs.

The pieces the network lab (:mod:`tests.infra.netlab`) shares with it live here too: starting
sshd in a namespace, entering a namespace from a thread (:func:`in_namespace`), writing a Pi
inventory, and removing the namespaces of a test process that was killed.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil
import yaml

from tests.infra.common import ClosedOnExit, require, stop_pids, stop_process, wait_for

#: RFC 2544: reserved for network device benchmarks; never routed on the internet.
TEST_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
NAME_PREFIX = "proxyflox-"
SSHD = "/usr/sbin/sshd"
#: ``proxyflox-<pid of the test process>-<subnet index>-<host number>``
_NAME = re.compile(rf"^{NAME_PREFIX}(\d+)-\d+-\d+$")
_CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class SshKeys(Protocol):
    """What an inventory needs of a lab: the controller's address, the key, known_hosts."""

    @property
    def controller_address(self) -> str: ...

    client_key: Path
    known_hosts: Path


def require_netns_tools() -> None:
    """Fail (not skip) naming what is missing to run sshd hosts in namespaces (and to limit
    their links' rates)."""
    require(root=True, commands=["ip", "tc", SSHD, "ssh", "ssh-keygen"])


@dataclass
class SshHost:
    """One namespace: a fake Pi at ``address``, reached from this host through ``gateway``."""

    name: str
    address: str
    gateway: str
    host_link: str
    #: The host's public key line (``ssh-ed25519 AAAA...``); ``None`` when no sshd runs.
    host_key: str | None = None
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def netns_id(self) -> str:
        """How ``readlink /proc/PID/ns/net`` names this namespace: ``net:[<inode>]``."""
        return f"net:[{os.stat(f'/run/netns/{self.name}').st_ino}]"

    def pids(self) -> list[int]:
        """Processes running inside the namespace."""
        return namespace_pids(self.name)

    def commands(self) -> list[str]:
        """Command lines of the processes inside the namespace."""
        return namespace_commands(self.name)


def namespace_pids(namespace: str) -> list[int]:
    """Processes running inside the named network namespace."""
    done = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in done.stdout.split()]


def namespace_commands(namespace: str) -> list[str]:
    """Command lines of the processes inside the named network namespace."""
    found = []
    for pid in namespace_pids(namespace):
        try:
            found.append(" ".join(psutil.Process(pid).cmdline()))
        except psutil.NoSuchProcess:
            continue
    return found


class NetnsLab(ClosedOnExit):
    """Namespaces with sshd, a client key authorized in all of them, and a known_hosts file."""

    def __init__(self, workdir: Path) -> None:
        require_netns_tools()
        self.workdir = workdir
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.hosts: list[SshHost] = []
        remove_stale_namespaces()
        self._index, self._subnet = free_subnet()
        self.client_key = workdir / "id_ed25519"
        keygen(self.client_key)
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text("")

    @property
    def controller_address(self) -> str:
        """This host's address on the first veth: every namespace can reach it."""
        return str(self._subnet.network_address + 1)

    def add_host(self, *, sshd: bool = True) -> SshHost:
        """A new namespace with its veth pair and, unless ``sshd=False``, a running sshd whose
        host key is added to :attr:`known_hosts`."""
        k = len(self.hosts)
        if 4 * k + 3 >= self._subnet.num_addresses:
            raise ValueError("at most 64 hosts per lab")
        gateway = self._subnet.network_address + 4 * k + 1
        host = SshHost(
            name=f"{NAME_PREFIX}{os.getpid()}-{self._index}-{k}",
            address=str(gateway + 1),
            gateway=str(gateway),
            host_link=f"pf{self._index}h{k}",
        )
        self.hosts.append(host)  # before creating anything, so close() removes partial setups
        peer = f"pf{self._index}p{k}"
        ip("netns", "add", host.name)
        ip("link", "add", host.host_link, "type", "veth", "peer", "name", peer, "netns", host.name)
        ip("addr", "add", f"{host.gateway}/30", "dev", host.host_link)
        ip("link", "set", host.host_link, "up")
        ip("-n", host.name, "link", "set", "lo", "up")
        ip("-n", host.name, "addr", "add", f"{host.address}/30", "dev", peer)
        ip("-n", host.name, "link", "set", peer, "up")
        ip("-n", host.name, "route", "add", str(TEST_NETWORK), "via", host.gateway)
        if sshd:
            self._start_sshd(host, k)
        return host

    def _start_sshd(self, host: SshHost, k: int) -> None:
        host.sshd, host.host_key = start_sshd(
            self.workdir / f"sshd-{k}", host.name, host.address, self.client_key, self.known_hosts
        )

    def close(self) -> None:
        """Stop every process in the namespaces, delete them and their veth pairs."""
        errors = []
        for host in self.hosts:
            try:
                if host.sshd is not None:
                    stop_process(host.sshd)
                remove_namespace(host.name, host.host_link)
            except Exception as err:  # keep tearing down the others
                errors.append(f"{host.name}: {err}")
        if errors:
            raise RuntimeError("teardown failed: " + "; ".join(errors))


def start_sshd(
    home: Path, namespace: str, address: str, client_key: Path, known_hosts: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """A real sshd inside ``namespace`` listening on ``address``:22 that accepts ``client_key``;
    its host key is appended to ``known_hosts``. Returns the process and the host key line."""
    home.mkdir(mode=0o700)
    host_key = home / "ssh_host_ed25519_key"
    keygen(host_key)
    authorized = home / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    config = home / "sshd_config"
    config.write_text(
        f"ListenAddress {address}\n"
        "Port 22\n"
        f"HostKey {host_key}\n"
        f"PidFile {home / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        # write_inventory passes the controller's PYTHONPATH on, so the Pis run its code.
        "AcceptEnv PYTHONPATH\n"
        # The test's files live under /tmp, which is world-writable; StrictModes would
        # refuse the authorized_keys file for that alone.
        "StrictModes no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    with open(home / "sshd.log", "wb") as log:
        sshd = subprocess.Popen(
            ["ip", "netns", "exec", namespace, SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    public_key = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
    with open(known_hosts, "a") as known:
        known.write(f"{address} {public_key}\n")

    def listening() -> bool:
        if sshd.poll() is not None:
            log_text = (home / "sshd.log").read_text()
            raise RuntimeError(f"sshd in {namespace} exited: {log_text.strip()}")
        return port_open(namespace, address, 22)

    wait_for(f"sshd on {address}:22", listening, timeout=15)
    return sshd, public_key


def port_open(namespace: str, address: str, port: int) -> bool:
    """Whether something inside ``namespace`` accepts TCP connections on ``address:port``."""

    def connect() -> bool:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
        except OSError:
            return False
        return True

    return in_namespace(namespace, connect)


def in_namespace(namespace: str, call: Callable[[], T]) -> T:
    """``call()`` on a thread that has entered the network namespace ``namespace``: its sockets,
    and the processes it starts, live there. Other threads of this process stay where they are
    (a network namespace belongs to a thread, so this needs no process of its own)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            with open(f"/run/netns/{namespace}") as handle:
                if _LIBC.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
            outcome.append(call())
        except BaseException as err:  # handed to the caller's thread
            failure.append(err)

    thread = threading.Thread(target=body, name=f"netns {namespace}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def write_inventory(
    path: Path,
    lab: SshKeys,
    pis: Mapping[str, Mapping[str, Any]],
    aggregator: Mapping[str, Any] | None = None,
) -> Path:
    """An inventory as a user writes it: the lab's key and known_hosts, this venv's python."""
    data: dict[str, Any] = {
        "controller_address": lab.controller_address,
        "defaults": {
            "user": "root",
            # The namespaces share this filesystem: the same venv serves as the Pis'.
            "python": sys.executable,
            "identity_file": str(lab.client_key),
            "known_hosts": str(lab.known_hosts),
            "worker_logdir": str(path.parent / "worker-logs"),
        },
        "pis": {name: dict(pi) for name, pi in pis.items()},
    }
    if os.environ.get("PYTHONPATH"):
        # ssh starts the Pis' workers without this process's environment; they must import
        # the same code as the controller (a checkout ahead of the venv's own install).
        data["defaults"]["ssh_options"] = [f"SetEnv=PYTHONPATH={os.environ['PYTHONPATH']}"]
    if aggregator is not None:
        data["aggregator"] = dict(aggregator)
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # Pis in the given order
    return path


def ip(*args: str) -> None:
    """Run ``ip ARGS``; its stderr in the error when it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def keygen(path: Path) -> None:
    """A new ed25519 key pair without passphrase at ``path`` (and ``path.pub``)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "proxyflox-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def free_subnet() -> tuple[int, ipaddress.IPv4Network]:
    """A /24 of 198.18.0.0/15 that no interface of this host uses yet."""
    used = {
        ipaddress.IPv4Address(address.address)
        for addresses in psutil.net_if_addrs().values()
        for address in addresses
        if address.family == socket.AF_INET
    }
    candidates = list(enumerate(ipaddress.IPv4Network(TEST_NETWORK).subnets(new_prefix=24)))
    random.shuffle(candidates)
    for index, subnet in candidates:
        if not any(address in subnet for address in used):
            return index, subnet
    raise RuntimeError(f"no free /24 left in {TEST_NETWORK}")


def remove_namespace(name: str, host_link: str) -> None:
    """Stop every process inside the namespace, delete it, and wait until ``host_link`` (its
    veth's end in this namespace, if any) is gone."""
    if Path(f"/run/netns/{name}").exists():
        stop_pids(namespace_pids(name))
        ip("netns", "delete", name)
    if not host_link:
        return
    # Deleting the namespace deletes the veth pair, but asynchronously.
    link = Path("/sys/class/net") / host_link
    if link.exists():
        subprocess.run(["ip", "link", "delete", host_link], capture_output=True, check=False)
    wait_for(f"{host_link} to disappear", lambda: not link.exists(), timeout=10)


def remove_stale_namespaces() -> None:
    """Namespaces an earlier test process left behind when it was killed (never another live
    process's): stop what runs in them and delete them."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir():
        return
    for entry in netns_dir.iterdir():
        match = _NAME.match(entry.name)
        if match and not psutil.pid_exists(int(match.group(1))):
            remove_namespace(entry.name, host_link="")
