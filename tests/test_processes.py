"""Runs on parsl_configs/local_htex.py: real worker processes, started without an activated venv.

These prove the data path (the controller process never reads weights) and that Parsl is shut
down on every exit path, leaving no worker behind.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest

from proxyflox.checkpoints import find_resume_point
from proxyflox.controller import AppBodies, run_federation
from proxyflox.controller.runtime import ParslRuntime
from proxyflox.messages import Primed
from proxyflox.results import create_run_dir
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from tests.helpers import CLI, DEFAULT_EXPERIMENT, bare_env, only_run_dir, run_cli

pytestmark = pytest.mark.slow


def processes_of(run_dir: Path) -> list[str]:
    """Command lines of live processes that belong to a run (Parsl puts its run dir in them)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(run_dir) in cmdline:
            found.append(cmdline)
    return found


def wait_until_gone(run_dir: Path, seconds: float = 20) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := processes_of(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_controller_never_reads_weights_on_real_processes(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    process = subprocess.Popen(
        [
            sys.executable,
            str(CLI),
            "--config",
            "local_htex.py",
            "--rounds",
            "2",
            "--runs_dir",
            str(tmp_path / "runs"),
            "--store.directory",
            str(store_dir),
            "--store.access_log",
            "true",
        ],
        cwd=tmp_path,
        env=bare_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "round   2/2  accuracy" in stdout
    controller = str(process.pid)
    run_dir = only_run_dir(tmp_path / "runs")

    log = [line.split("\t") for line in (run_dir / "store-access.log").read_text().splitlines()]
    reads_by_pid: dict[str, int] = {}
    for pid, op, _key in log:
        if op == "get":
            reads_by_pid[pid] = reads_by_pid.get(pid, 0) + 1
    assert controller not in reads_by_pid  # zero weight reads in the controller
    assert not [pid for pid, op, _ in log if op == "put" and pid == controller]
    assert len(reads_by_pid) == 5  # four site workers and the aggregator's worker
    # The controller's only part: evicting, by key, everything the apps put.
    assert {k for _, op, k in log if op == "put"} == {k for _, op, k in log if op == "evict"}
    assert {pid for pid, op, _ in log if op == "evict"} == {controller}
    assert list(store_dir.iterdir()) == []
    assert wait_until_gone(run_dir) == []


def test_every_worker_is_primed_and_the_run_is_the_unprimed_one_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primings: dict[str, Future[Primed]] = {}
    start_priming = ParslRuntime._start_priming

    def recording(runtime: ParslRuntime) -> None:
        start_priming(runtime)
        primings.update(runtime.primings)

    monkeypatch.setattr(ParslRuntime, "_start_priming", recording)
    experiment = load_experiment(DEFAULT_EXPERIMENT, {"rounds": "2", "runs_dir": str(tmp_path)})
    primed_dir = create_run_dir(tmp_path / "primed", experiment.name)
    run_federation(
        experiment, load_deployment("local_htex.py"), primed_dir, progress=lambda line: None
    )
    unprimed_dir = create_run_dir(tmp_path / "unprimed", experiment.name)
    run_federation(
        experiment,
        load_deployment("local.py"),
        unprimed_dir,
        progress=lambda line: None,
        bodies=AppBodies(prime=None),
    )

    primed = {label: future.result(timeout=0) for label, future in primings.items()}
    assert {label: [entry.split(":")[0] for entry in p.loaded] for label, p in primed.items()} == {
        **{f"site-{site}": [f"site {site}"] for site in range(4)},
        "aggregator": ["test"],
    }
    assert all(p.error == "" for p in primed.values())
    pids = {p.pid for p in primed.values()}
    assert len(pids) == 5
    assert os.getpid() not in pids
    with open(primed_dir / "sites.csv", newline="") as file:  # each primed the worker that trains
        trained = {(row["executor"], int(row["pid"])) for row in csv.DictReader(file)}
    assert trained == {(f"site-{site}", primed[f"site-{site}"].pid) for site in range(4)}

    def metrics(run_dir: Path) -> list[tuple[str, str, str]]:
        with open(run_dir / "rounds.csv", newline="") as file:
            return [(r["round"], r["accuracy"], r["loss"]) for r in csv.DictReader(file)]

    assert metrics(primed_dir) == metrics(unprimed_dir)
    assert (primed_dir / "model.pt").read_bytes() == (unprimed_dir / "model.pt").read_bytes()
    for checkpoint in (unprimed_dir / "checkpoints").rglob("*"):
        twin = primed_dir / checkpoint.relative_to(unprimed_dir)
        if checkpoint.name == "row.json":  # a round's row: equal but for its timings
            assert untimed(twin) == untimed(checkpoint), twin
        elif checkpoint.is_file():
            assert twin.read_bytes() == checkpoint.read_bytes(), twin


def untimed(row_file: Path) -> dict[str, Any]:
    """A checkpoint's pending row without the columns that time the round."""
    saved = json.loads(row_file.read_text())
    saved["row"] = {k: v for k, v in saved["row"].items() if "seconds" not in k}
    return saved


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupting_a_run_shuts_parsl_down_and_leaves_no_worker(
    tmp_path: Path, stop: signal.Signals
) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            str(CLI),
            "--config",
            "local_htex.py",
            "--rounds",
            "500",
            "--runs_dir",
            str(tmp_path / "runs"),
        ],
        cwd=tmp_path,
        env=bare_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("round   2/"):
            break
    run_dir = only_run_dir(tmp_path / "runs")
    assert any("process_worker_pool" in c for c in processes_of(run_dir))
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted; finished rounds are in" in stderr
    assert wait_until_gone(run_dir) == []
    assert not (run_dir / "store").exists()
    assert len((run_dir / "rounds.csv").read_text().splitlines()) >= 3  # header + 2 rounds


def start_long_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, list[int]]:
    """A 500-round run on local_htex.py in a session of its own (as a terminal's foreground
    job is), read until round 2; returns it, its run directory and its interchanges' pids."""
    process = subprocess.Popen(
        [sys.executable, str(CLI), "--config", "local_htex.py", "--rounds", "500",
         "--runs_dir", str(tmp_path / "runs")],
        cwd=tmp_path, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("round   2/"):
            break
    interchanges = [
        child.pid
        for child in psutil.Process(process.pid).children()
        if "interchange" in " ".join(child.cmdline())
    ]
    assert len(interchanges) == 5  # four sites and the aggregator
    return process, only_run_dir(tmp_path / "runs"), interchanges


def alive(pids: list[int]) -> list[int]:
    return [
        pid
        for pid in pids
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]


def test_a_terminal_ctrl_c_stops_the_whole_run_promptly(tmp_path: Path) -> None:
    # A terminal sends SIGINT to its whole foreground process group, not to one pid.
    process, run_dir, interchanges = start_long_run(tmp_path)
    start = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - start < 30
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert wait_until_gone(run_dir) == []
    assert alive(interchanges) == []
    assert find_resume_point(run_dir).round_number >= 2  # resumable


def test_a_second_ctrl_c_during_shutdown_kills_the_run_at_once(tmp_path: Path) -> None:
    # Whatever Parsl's shutdown waits on, a second Ctrl-C ends it (a first one that takes too
    # long is ended the same way by a timer): the run's processes go, its rounds stay.
    process, run_dir, interchanges = start_long_run(tmp_path)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted (stopped again; its processes were killed); finished rounds" in stderr
    assert wait_until_gone(run_dir) == []
    assert alive(interchanges) == []
    assert find_resume_point(run_dir).round_number >= 2


def test_a_killed_controller_leaves_no_process_running(tmp_path: Path) -> None:
    # kill -9 (or the OOM killer): no shutdown code runs in the controller at all.
    process, run_dir, interchanges = start_long_run(tmp_path)
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while alive(interchanges) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(interchanges) == []  # at once: the kernel signals them
    assert wait_until_gone(run_dir, seconds=60) == []  # pools: within their heartbeat threshold


def test_a_failing_site_app_stops_the_run_cleanly(tmp_path: Path) -> None:
    # Dirichlet(0.01) over 400 sites leaves sites empty: their apps raise, and with no site
    # left the run stops (resumable, exit 3) naming the reason once for all such sites.
    done = run_cli(
        "--config", "local_htex.py", "--rounds", "2", "--sites", "400",
        "--partition", "dirichlet", "--alpha", "0.01", "--runs_dir", str(tmp_path / "runs"),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3
    assert "error: run stopped: round 1: 0 of 400 sites returned" in done.stderr
    assert "without training samples" in done.stderr
    assert len(done.stderr) < 2000  # sites failing for one reason share one entry
    assert "Traceback" not in done.stderr
    assert wait_until_gone(only_run_dir(tmp_path / "runs")) == []


def test_ctrl_c_before_the_first_round_leaves_nothing_and_says_so(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(CLI), "--config", "local_htex.py",
         "--runs_dir", str(tmp_path / "runs")],
        cwd=tmp_path, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("run directory: ")
    run_dir = Path(first.removeprefix("run directory: ").strip())
    time.sleep(1)  # Parsl is loading: no round has finished
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "interrupted; no round finished, so there is nothing to resume" in stderr
    assert "--resume" not in stderr
    assert "Traceback" not in stderr
    assert not run_dir.exists()


def test_ctrl_c_while_starting_is_one_line(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(CLI), "--runs_dir", str(tmp_path / "runs")],
        cwd=tmp_path, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    time.sleep(0.5)  # importing torch and Parsl
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_in_use_cannot_be_resumed_twice(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(CLI), "--rounds", "500", "--runs_dir", str(tmp_path / "runs")],
        cwd=tmp_path, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.startswith("round   2/"):
                break
        run_dir = only_run_dir(tmp_path / "runs")
        rounds_before = (run_dir / "rounds.csv").read_text()
        second = run_cli("--resume", str(run_dir), cwd=tmp_path)
        assert second.returncode == 2
        assert f"is in use by another run (pid {process.pid})" in second.stderr
        assert (run_dir / "rounds.csv").read_text().startswith(rounds_before)  # not truncated
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=120)
