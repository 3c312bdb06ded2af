"""``parsl_configs/pis.py`` against real sshd hosts: each fake Pi is a network namespace with its
own address and sshd, reached over ssh with a key and a known_hosts file made for the test.

Needs root, ``ip`` and OpenSSH (client and server); without them these tests fail saying what is
missing. The namespaces, sshd and everything started inside them are removed after the module,
whether the tests pass or fail.
"""

from __future__ import annotations

import csv
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CLI, bare_env, only_run_dir
from tests.infra.common import processes_mentioning, require, run_workflow, wait_for
from tests.infra.netns import NetnsLab, SshHost, keygen, write_inventory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLab]:
    """Two fake Pis with sshd (more can be added by a test; all go at the end of the module)."""
    with NetnsLab(tmp_path_factory.mktemp("netns")) as lab:
        lab.add_host()
        lab.add_host()
        yield lab


def run_on_pis(tmp_path: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``fedavg.py --config pis.py --inventory FILE`` as a user runs it (no venv on PATH)."""
    command = ["--config", "pis.py", "--inventory", str(inventory)]
    command += ["--runs_dir", str(tmp_path / "runs"), *args]
    return run_workflow(
        [sys.executable, str(CLI), *command], cwd=tmp_path, env=bare_env(), timeout=300
    )


def worker_pools_in(hosts: list[SshHost]) -> list[str]:
    return [c for host in hosts for c in host.commands() if "process_worker_pool" in c]


def certificate_dirs(hosts: list[SshHost]) -> dict[str, Path]:
    """Per namespace, the ``--cert_dir`` its running worker pool was started with."""
    found = {}
    for host in hosts:
        for command in worker_pools_in([host]):
            match = re.search(r"--cert_dir (/\S+)", command)
            if match:
                found[host.name] = Path(match.group(1))
    return found


def modes(directory: Path) -> dict[str, str]:
    """``{name: octal mode}`` of a directory (``"."``) and of the files in it."""
    entries = {".": directory, **{path.name: path for path in directory.iterdir()}}
    return {name: oct(stat.S_IMODE(path.stat().st_mode)) for name, path in entries.items()}


def assert_nothing_left(lab: NetnsLab, tmp_path: Path) -> None:
    """No worker pool in any namespace; no ssh client, submit script or process of the run on
    this host (their command lines name the run directory or the Pis' log directory)."""

    def leftovers() -> list[str]:
        return (
            worker_pools_in(lab.hosts)
            + processes_mentioning(str(only_run_dir(tmp_path / "runs")))
            + processes_mentioning(str(tmp_path / "worker-logs"))
        )

    try:
        wait_for("the run's processes to exit", lambda: not leftovers(), timeout=30, interval=0.5)
    except TimeoutError:
        pytest.fail(f"left behind: {leftovers()}", pytrace=False)
    for host in lab.hosts:  # only sshd's listener itself is still running
        expected = ["sshd: "] if host.sshd is not None else []
        assert [c[:6] for c in host.commands()] == expected, host.commands()


def test_two_round_fedavg_trains_each_site_inside_its_pi(tmp_path: Path, lab: NetnsLab) -> None:
    pi1, pi2 = lab.hosts[:2]
    inventory = write_inventory(
        tmp_path / "pis.yaml",
        lab,
        {
            "pi-1": {"host": pi1.address, "site_options": {"batch_size": 1}},
            "pi-2": {"host": pi2.address, "site_options": {"local_epochs": 2}},
        },
    )
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as background:
        args = ("--rounds", "2", "--sites", "2")
        running = background.submit(run_on_pis, tmp_path, inventory, *args)
        # While the run goes on: each Pi's pool reads the run's certificates from a private
        # directory of its own, copied there over ssh (not the controller's path).
        wait_for(
            "both Pis' worker pools", lambda: len(certificate_dirs([pi1, pi2])) == 2, timeout=120
        )
        on_the_pis = certificate_dirs([pi1, pi2])
        for directory in on_the_pis.values():
            assert directory.parent == Path("/dev/shm")
            files = ["client.key_secret", "server.key_secret"]  # what a pool reads
            assert modes(directory) == {".": "0o700", **dict.fromkeys(files, "0o600")}
        done = running.result()
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "round   2/2  accuracy" in done.stdout
    run_dir = only_run_dir(tmp_path / "runs")
    # Parsl's traffic was encrypted (the default): the controller made certificates per Pi.
    assert (run_dir / "parsl" / "000" / "pi-1" / "certificates" / "server.key").is_file()

    with open(run_dir / "sites.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4
    controller_netns = Path("/proc/self/ns/net").readlink().as_posix()
    for row in rows:
        pi = {"pi-1": pi1, "pi-2": pi2}[row["executor"]]
        # Recorded inside the train app: it ran in that Pi's network namespace.
        assert row["netns"] == pi.netns_id != controller_netns
        assert row["site"] == {"pi-1": "0", "pi-2": "1"}[row["executor"]]
    # The inventory's per-Pi options reached each Pi's train app.
    assert {r["batch_size"] for r in rows if r["executor"] == "pi-1"} == {"1"}
    assert {r["local_epochs"] for r in rows if r["executor"] == "pi-1"} == {"1"}
    assert {r["local_epochs"] for r in rows if r["executor"] == "pi-2"} == {"2"}
    assert {r["batch_size"] for r in rows if r["executor"] == "pi-2"} == {"32"}
    # One warm worker per Pi served both rounds.
    for executor in ("pi-1", "pi-2"):
        assert len({r["pid"] for r in rows if r["executor"] == executor}) == 1

    # The worker pool really was started over ssh, with host keys checked.
    scripts = list((run_dir / "parsl").glob("*/submit_scripts/parsl.pi-1.block-0.*.sh"))
    assert len(scripts) == 1
    script = scripts[0].read_text()
    assert "ssh -tt -o BatchMode=yes -o StrictHostKeyChecking=yes " in script
    assert f"UserKnownHostsFile={lab.known_hosts}" in script
    assert "StrictHostKeyChecking=no" not in script
    # The certificates went through ssh's stdin; no key is in the script.
    assert "-m proxyflox.certificates receive" in script
    assert "secret-key" not in script

    assert_nothing_left(lab, tmp_path)
    assert not any(directory.exists() for directory in on_the_pis.values())

    with open(run_dir / "rounds.csv", newline="") as file:
        first, second = (float(r["round_seconds"]) for r in csv.DictReader(file))
    print(
        f"\n2 rounds over 2 namespace Pis: {wall:.1f}s wall clock; round 1 {first:.2f}s, "
        f"round 2 {second:.2f}s (first-round worker start ~{first - second:.1f}s)"
    )


@pytest.mark.parametrize("fault", ["no sshd", "unknown host key"])
def test_an_unreachable_pi_is_dropped_naming_it_and_why(
    tmp_path: Path, lab: NetnsLab, fault: str
) -> None:
    good = lab.hosts[0]
    pi_bad: dict[str, Any]
    if fault == "no sshd":
        bad = lab.add_host(sshd=False)  # the address answers, nothing listens on port 22
        pi_bad = {"host": bad.address}
        expected = "Connection refused"
    else:
        # A known_hosts file with some other key for the Pi's address: ssh must refuse it.
        keygen(tmp_path / "other_key")
        other = " ".join((tmp_path / "other_key.pub").read_text().split()[:2])
        known = tmp_path / "known_hosts_wrong"
        known.write_text(f"{lab.hosts[1].address} {other}\n")
        pi_bad = {"host": lab.hosts[1].address, "known_hosts": str(known)}
        expected = "Host key verification failed"
    inventory = write_inventory(
        tmp_path / "pis.yaml", lab, {"pi-1": {"host": good.address}, "pi-bad": pi_bad}
    )
    start = time.perf_counter()
    done = run_on_pis(tmp_path, inventory, "--rounds", "2", "--sites", "2")
    assert time.perf_counter() - start < 120

    # The run goes on without the Pi (min_clients 1): its site fails in every round.
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(", failed: 1)") == 2
    run_dir = only_run_dir(tmp_path / "runs")
    with open(run_dir / "rounds.csv", newline="") as file:
        rounds = list(csv.DictReader(file))
    assert [r["failed_site_ids"] for r in rounds] == ["1", "1"]
    assert all("pi-bad: starting the worker pool on root@" in r["failures"] for r in rounds)
    with open(run_dir / "sites.csv", newline="") as file:
        assert {r["executor"] for r in csv.DictReader(file)} == {"pi-1"}
    # ssh's own words are in the block's stderr, where Parsl's error message points.
    (stderr,) = (run_dir / "parsl").glob("*/submit_scripts/parsl.pi-bad.block-0.*.sh.err")
    assert expected in stderr.read_text()
    assert_nothing_left(lab, tmp_path)


def test_a_run_needing_every_pi_stops_when_one_is_unreachable(
    tmp_path: Path, lab: NetnsLab
) -> None:
    bad = lab.add_host(sshd=False)
    inventory = write_inventory(
        tmp_path / "pis.yaml",
        lab,
        {"pi-1": {"host": lab.hosts[0].address}, "pi-bad": {"host": bad.address}},
    )
    done = run_on_pis(tmp_path, inventory, "--rounds", "2", "--sites", "2", "--min_clients", "2")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "error: run stopped: round 1: 1 of 2 sites" in done.stderr
    assert "pi-bad: starting the worker pool on root@" in done.stderr
    assert "Traceback" not in done.stderr
    assert_nothing_left(lab, tmp_path)


def test_the_lab_is_torn_down_when_a_test_fails(tmp_path: Path) -> None:
    hosts: list[SshHost] = []

    def fail_inside_the_lab() -> None:
        with NetnsLab(tmp_path / "lab") as lab:
            hosts.append(lab.add_host())
            assert hosts[0].sshd is not None
            raise RuntimeError("a failing test")

    with pytest.raises(RuntimeError, match="a failing test"):
        fail_inside_the_lab()
    (host,) = hosts
    sshd = host.sshd
    assert not Path(f"/run/netns/{host.name}").exists()
    assert not Path(f"/sys/class/net/{host.host_link}").exists()
    assert sshd is not None
    assert sshd.poll() is not None  # stopped


def test_a_missing_prerequisite_fails_naming_it() -> None:
    with pytest.raises(pytest.fail.Exception, match="the command '/nonexistent/sshd'"):
        require(root=True, commands=["ip", "/nonexistent/sshd"])


def test_a_killed_controller_leaves_nothing_running_on_the_pis(
    tmp_path: Path, lab: NetnsLab
) -> None:
    # kill -9 of the controller: its interchanges die with it, and each Pi's worker pool,
    # having lost its interchange, exits within its heartbeat threshold (60 s in pis.py).
    pi1, pi2 = lab.hosts[:2]
    inventory = write_inventory(
        tmp_path / "pis.yaml",
        lab,
        {"pi-1": {"host": pi1.address}, "pi-2": {"host": pi2.address}},
    )
    process = subprocess.Popen(
        [sys.executable, str(CLI), "--config", "pis.py", "--inventory", str(inventory),
         "--runs_dir", str(tmp_path / "runs"), "--rounds", "500", "--sites", "2"],
        cwd=tmp_path, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("round   2/"):
            break
    assert worker_pools_in([pi1, pi2])  # the Pis are working
    on_the_pis = certificate_dirs([pi1, pi2])
    assert len(on_the_pis) == 2
    process.kill()
    process.wait(timeout=30)
    killed = time.monotonic()

    def leftovers() -> list[str]:
        return worker_pools_in([pi1, pi2]) + processes_mentioning(str(tmp_path / "worker-logs"))

    try:
        wait_for("the Pis' worker pools to exit", lambda: not leftovers(), timeout=120, interval=1)
    except TimeoutError:
        pytest.fail(f"left behind after 120 s: {leftovers()}", pytrace=False)
    assert time.monotonic() - killed < 120
    # Each Pi's shell removed its certificates once its pool had given up.
    assert not any(directory.exists() for directory in on_the_pis.values())
