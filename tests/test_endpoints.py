"""``python -m proxyflox.endpoints up/down`` through its real command line: ``down`` touches
only what ``up`` made, and signals only the relay ``up`` started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import yaml

from proxyflox.endpoints import MANIFEST
from tests.helpers import bare_env

COMMAND = [sys.executable, "-m", "proxyflox.endpoints"]


def endpoints(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, env=bare_env(), timeout=120
    )


def test_down_refuses_a_directory_up_did_not_make(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "README.md").write_text("mine\n")
    done = endpoints("down", "--dir", str(project))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "was not set up by `python -m proxyflox.endpoints up`" in done.stderr
    assert (project / "README.md").read_text() == "mine\n"
    assert (project / "src").is_dir()


def test_down_removes_only_what_up_created(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("not the endpoints'\n")
    started = endpoints("up", "--sites", "1", "--dir", str(shared))
    assert started.returncode == 0, started.stderr
    stopped = endpoints("down", "--dir", str(shared))
    assert stopped.returncode == 0, stopped.stderr
    assert sorted(p.name for p in shared.iterdir()) == ["notes.txt"]


def test_down_never_signals_a_process_that_took_a_stale_relay_pid(tmp_path: Path) -> None:
    directory = tmp_path / "eps"
    started = endpoints("up", "--sites", "1", "--dir", str(directory))
    assert started.returncode == 0, started.stderr
    manifest = yaml.safe_load((directory / MANIFEST).read_text())
    relay = psutil.Process(manifest["relay"]["pid"])
    relay.terminate()
    relay.wait(10)
    # The relay is gone and its pid now names someone else's process group.
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        manifest["relay"]["pid"] = bystander.pid
        (directory / MANIFEST).write_text(yaml.safe_dump(manifest))
        stopped = endpoints("down", "--dir", str(directory))
        assert stopped.returncode == 0, stopped.stderr
        assert bystander.poll() is None  # still running: not the relay, never signalled
    finally:
        bystander.kill()
        bystander.wait()
    assert not directory.exists()


def test_up_into_an_unusable_directory_is_one_line(tmp_path: Path) -> None:
    done = endpoints("up", "--dir", "/proc/proxyflox-test")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: --dir /proc/proxyflox-test cannot be used")
    assert "Traceback" not in done.stderr
