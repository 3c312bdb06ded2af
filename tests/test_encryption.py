"""Parsl's traffic encrypted and authenticated (CurveZMQ) wherever workers are not on loopback.

- The certificates reach a Pi private (mode 0700 / 0600) and are removed once its worker pool
  ends, however it ends (here without ssh; over real sshd in ``test_pis.py``).
- An interchange with encryption on, listening on the host's address of a network namespace:
  a process in the namespace without the run's certificate never gets a task and nothing it
  sends is deserialized; with encryption off the same process gets a task and its pickle runs.
- ``local_htex.py`` listens on loopback only.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import pty
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import termios
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import parsl
import psutil
import pytest
import zmq
import zmq.auth
from parsl import python_app
from parsl.config import Config
from parsl.curvezmq import ClientContext, create_certificates
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

from proxyflox.certificates import receive
from proxyflox.executors import interchange_launch_cmd
from proxyflox.inventory import Pi, ssh_prepend
from proxyflox.pi_launcher import (
    PI_CERT_DIR_PREFIX,
    PiLauncher,
    archive_command,
    locate_pi_cert_dir,
    pool_command,
    receive_command,
)
from proxyflox.sites import load_deployment
from tests.helpers import ROOT
from tests.infra.common import running, wait_for
from tests.infra.netns import NetnsLab

PI = Pi(name="pi-1", host="198.18.0.2", python=sys.executable)


def archive_of(directory: Path) -> bytes:
    """The certificates as the launcher sends them."""
    command = archive_command(str(directory))
    return subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A run's certificates, made by Parsl as an encrypted executor's start() makes them."""
    (tmp_path / "run").mkdir()
    return Path(create_certificates(tmp_path / "run"))


def test_certificates_arrive_private_and_parsl_reads_them(
    tmp_path: Path, certificates: Path
) -> None:
    target = tmp_path / "on-the-pi"
    with open(tmp_path / "certs.tar", "wb+") as stream:
        stream.write(archive_of(certificates))
        stream.seek(0)
        names = receive(target, stream)
    assert sorted(names) == ["client.key_secret", "server.key_secret"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    for name in names:
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600
        assert (target / name).read_bytes() == (certificates / name).read_bytes()
    # What the worker pool does with --cert_dir (Parsl checks the modes and reads the keys).
    context = ClientContext(str(target))
    assert context.socket(zmq.DEALER).getsockopt(zmq.MECHANISM) == zmq.CURVE
    context.destroy(linger=0)


def test_certificates_are_never_written_into_an_existing_directory(
    tmp_path: Path, certificates: Path
) -> None:
    squatted = tmp_path / "made-by-someone-else"
    squatted.mkdir(mode=0o777)
    with open(tmp_path / "certs.tar", "wb+") as stream:
        stream.write(archive_of(certificates))
        stream.seek(0)
        with pytest.raises(FileExistsError):
            receive(squatted, stream)
    assert list(squatted.iterdir()) == []


def test_an_archive_with_anything_but_plain_files_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "server.key").write_text("key")
    (tmp_path / "src" / "link").symlink_to("/etc/passwd")
    with tarfile.open(tmp_path / "certs.tar", "w") as tar:
        tar.add(tmp_path / "src", arcname=".")
    target = tmp_path / "on-the-pi"
    with open(tmp_path / "certs.tar", "rb") as stream, pytest.raises(ValueError, match="link"):
        receive(target, stream)
    assert not target.exists()


def test_unencrypted_blocks_start_as_before_and_encrypted_ones_copy_first() -> None:
    launcher = PiLauncher(PI)
    plain = "python -m pool --port=1 --cert_dir None --logdir=x"
    assert launcher(plain, 1, 1) == f"{ssh_prepend(PI)} {plain}"

    script = launcher("python -m pool --cert_dir /ctrl/run/pi-1/certificates --logdir=x", 1, 1)
    note, copy, start = script.split("\n")
    assert note == "echo 'pi-1: starting the worker pool on 198.18.0.2 over ssh' >&2"
    # Through ssh's stdin (no terminal), never on a command line: only the path is named.
    assert copy.startswith(
        "tar -b 1 -C /ctrl/run/pi-1/certificates -cf - client.key_secret server.key_secret | "
        "ssh -o BatchMode=yes"
    )
    assert "proxyflox.certificates receive" in copy
    assert copy.endswith(" || exit 1")
    assert start.startswith("ssh -tt -o BatchMode=yes")
    assert "/ctrl/run" not in start
    assert '--cert_dir "$d"' in start
    # A new directory name for every block.
    names = {launcher("x --cert_dir /c", 1, 1).split(PI_CERT_DIR_PREFIX)[1][:16] for _ in "ab"}
    assert len(names) == 2


def under_a_terminal(script: str) -> tuple[subprocess.Popen[bytes], int]:
    """``sh -c SCRIPT`` as sshd runs a command for ``ssh -tt``: session leader of a pty whose
    master (returned) this side holds; closing it hangs the terminal up."""
    master, slave = pty.openpty()
    shell = subprocess.Popen(
        ["sh", "-c", script],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(slave)
    return shell, master


#: Stands in for the worker pool: writes what it was told and how the directory looks, waits.
STAND_IN = (
    "import json, os, stat, sys, time; d = sys.argv[2]; "
    "mode = lambda path: oct(stat.S_IMODE(os.stat(path).st_mode)); "
    "files = {name: mode(os.path.join(d, name)) for name in os.listdir(d)}; "
    "json.dump([d, mode(d), files], open(sys.argv[3] + '.tmp', 'w')); "
    "os.rename(sys.argv[3] + '.tmp', sys.argv[3]); time.sleep(float(sys.argv[4]))"
)


@pytest.mark.parametrize("ending", ["terminal hangs up", "pool exits", "shell terminated"])
def test_the_pi_removes_its_certificates_when_the_pool_ends(
    tmp_path: Path, certificates: Path, ending: str
) -> None:
    name = PI_CERT_DIR_PREFIX + "test" + os.urandom(6).hex()
    received = subprocess.run(
        ["sh", "-c", receive_command(PI, name)], input=archive_of(certificates), check=False
    )
    assert received.returncode == 0
    directory = Path(
        subprocess.run(
            ["sh", "-c", f'{locate_pi_cert_dir(name)}; echo "$d"'], capture_output=True, text=True
        ).stdout.strip()
    )
    assert directory.name == name
    assert directory.is_dir()
    report = tmp_path / "report"
    seconds = "0.5" if ending == "pool exits" else "60"
    stand_in = shlex.join([sys.executable, "-c", STAND_IN])
    command = f"{stand_in} --cert_dir {certificates} {report} {seconds}"
    shell, master = under_a_terminal(pool_command(command, name))
    try:
        wait_for("the stand-in's report", report.exists, timeout=20)
        told, dir_mode, file_modes = json.loads(report.read_text())
        assert (told, dir_mode) == (str(directory), "0o700")
        assert set(file_modes.values()) == {"0o600"}
        (stand_in_process,) = psutil.Process(shell.pid).children()
        if ending == "terminal hangs up":
            os.close(master)  # what closing the ssh session does
            master = -1
        elif ending == "shell terminated":
            shell.terminate()
        shell.wait(timeout=20)
        assert not directory.exists()
        assert not running(stand_in_process)
    finally:
        if shell.poll() is None:
            shell.kill()
        if master >= 0:
            os.close(master)
        shutil.rmtree(directory, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Who may connect to the interchange


def controller_side_executor(label: str, address: str, encrypted: bool) -> HighThroughputExecutor:
    """An interchange on ``address`` with no worker pool of its own: tasks wait for workers."""
    return HighThroughputExecutor(
        label=label,
        address=address,
        encrypted=encrypted,
        interchange_launch_cmd=interchange_launch_cmd(),
        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0),
    )


def rogue(namespace: str, url: str, marker: Path, seconds: float, *key: str) -> dict[str, dict]:
    """Run :mod:`tests.infra.rogue_worker` inside ``namespace``; its report per socket."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.infra.rogue_worker",
         url, str(marker), str(seconds), *key],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {line["socket"]: line for line in map(json.loads, done.stdout.splitlines())}


@pytest.fixture(scope="module")
def namespace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A namespace (no sshd) and this host's address that it reaches."""
    with NetnsLab(tmp_path_factory.mktemp("netns")) as lab:
        host = lab.add_host(sshd=False)
        yield host.name, lab.controller_address


@pytest.mark.slow
def test_a_worker_without_the_certificate_gets_nothing_and_is_never_unpickled(
    tmp_path: Path, namespace: tuple[str, str]
) -> None:
    name, address = namespace
    encrypted = controller_side_executor("encrypted", address, encrypted=True)
    plain = controller_side_executor("plain", address, encrypted=False)
    config = Config(executors=[encrypted, plain], run_dir=str(tmp_path / "parsl"), strategy="none")
    with parsl.load(config):
        futures = {
            label: python_app(platform.node, executors=[label])()
            for label in ("encrypted", "plain")
        }
        assert encrypted.cert_dir is not None
        server_key, _ = zmq.auth.load_certificate(Path(encrypted.cert_dir) / "server.key")
        marker = tmp_path / "unpickled-by-the-encrypted-side"
        seen = rogue(
            name, f"tcp://{address}:{encrypted.worker_port}", marker, 4, server_key.decode()
        )
        # Neither a socket without keys nor one with a key pair the run never made gets an
        # answer, let alone the task waiting for a worker; nothing it sent was unpickled.
        assert seen == {
            kind: {"socket": kind, "probe_answered": False, "tasks": []}
            for kind in ("plain", "curve")
        }
        assert not marker.exists()
        assert not futures["encrypted"].done()
        log = (Path(encrypted.logdir) / "interchange.log").read_text()
        assert "Registered manager" not in log
        assert "Failed to read manager message" not in log

        # The same process against an interchange with encryption off: it registers, is sent
        # the waiting task, and its pickle ran on this host (the marker is made here).
        marker = tmp_path / "unpickled-by-the-plain-side"
        seen = rogue(name, f"tcp://{address}:{plain.worker_port}", marker, 4)
        assert seen["plain"]["probe_answered"] is True
        assert len(seen["plain"]["tasks"]) == 1
        assert marker.is_dir()


# ----------------------------------------------------------------------------------------------
# Loopback configs


def listening_addresses(processes: list[psutil.Process]) -> set[IPv4Address | IPv6Address]:
    """Local addresses of the TCP sockets these processes listen on (an IPv4 address mapped into
    IPv6, as ZMQ's dual-stack sockets report it, as the IPv4 address)."""
    found: set[IPv4Address | IPv6Address] = set()
    for process in processes:
        for connection in process.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN:
                address = ip_address(connection.laddr.ip)
                mapped = getattr(address, "ipv4_mapped", None)
                found.add(mapped or address)
    return found


@pytest.mark.slow
def test_local_htex_listens_on_loopback_only(tmp_path: Path) -> None:
    deployment = load_deployment("local_htex.py")
    config = deployment.parsl_config
    config.run_dir = str(tmp_path / "parsl")
    labels = [executor.label for executor in config.executors]
    with parsl.load(config):
        # Every interchange has bound its ports once Parsl has loaded (worker pools only
        # connect to them; whichever have started yet are looked at too).
        me = psutil.Process()
        processes = [me, *me.children(recursive=True)]
        interchanges = [p for p in processes if any("interchange" in a for a in p.cmdline())]
        assert len(interchanges) == len(labels)
        addresses = listening_addresses(processes)
        assert addresses
        assert all(address.is_loopback for address in addresses), addresses
        executors = config.executors
        assert all(isinstance(e, HighThroughputExecutor) and not e.encrypted for e in executors)
