"""Real faults: a site's worker pool SIGKILLed mid-round, a Redis server stopped mid-run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from proxyflox.apps import aggregate_updates
from proxyflox.controller import AppBodies, RunStoppedError, run_federation
from proxyflox.endpoints import free_port
from proxyflox.results import create_run_dir, read_rounds
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from tests.helpers import CLI, DEFAULT_EXPERIMENT, bare_env, only_run_dir, run_cli
from tests.servers import redis_command, redis_keys, redis_server, wait_for_redis

pytestmark = pytest.mark.slow


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CLI), *args],
        cwd=cwd, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_line(process: subprocess.Popen[str], prefix: str) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}")


def kill_worker_pool(run_dir: Path, label: str) -> None:
    """SIGKILL the worker pool of one site executor (found by its log directory)."""
    pools = [
        p for p in psutil.process_iter(["cmdline"])
        if "process_worker_pool" in " ".join(p.info["cmdline"] or [])
        and f"{run_dir}/parsl/000/{label}" in " ".join(p.info["cmdline"] or [])
    ]  # fmt: skip
    assert pools, f"no worker pool of {label} running"
    for pool in pools:  # the whole machine is lost: the pool and the worker it spawned
        for worker in pool.children(recursive=True):
            worker.kill()
        pool.kill()


# Site 3 trains 60 epochs a round (about 2 s): long enough to be killed in the middle.
SLOW_SITE_3 = ["--config", "local_htex.py", "--rounds", "4",
               "--site_options.site-3.local_epochs", "60"]  # fmt: skip


def test_a_killed_site_is_recorded_and_the_survivors_finish(tmp_path: Path) -> None:
    process = start([*SLOW_SITE_3, "--min_clients", "3", "--runs_dir", str(tmp_path)], tmp_path)
    # Round 1's row is written once round 2's updates are in (its evaluation ran meanwhile):
    # the pool dies before round 3 starts.
    wait_for_line(process, "round   1/4")
    run_dir = only_run_dir(tmp_path)
    kill_worker_pool(run_dir, "site-3")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    rows = read_rounds(run_dir)
    assert len(rows) == 4
    assert [row["failed_site_ids"] for row in rows] == ["", "", "3", "3"]
    assert [row["site_ids"] for row in rows] == ["0 1 2 3", "0 1 2 3", "0 1 2", "0 1 2"]
    assert "site 3:" in rows[2]["failures"]


def test_too_few_sites_stops_cleanly_and_resumes_later(tmp_path: Path) -> None:
    process = start([*SLOW_SITE_3, "--min_clients", "4", "--runs_dir", str(tmp_path)], tmp_path)
    wait_for_line(process, "round   1/4")
    run_dir = only_run_dir(tmp_path)
    kill_worker_pool(run_dir, "site-3")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 3
    assert "error: run stopped: round 3: 3 of 4 sites returned" in stderr
    assert f"--resume {run_dir}" in stderr
    assert "Traceback" not in stderr
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "round-0002"
    assert [row["round"] for row in read_rounds(run_dir)] == ["1", "2"]  # round 2's written

    resumed = run_cli("--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [row["round"] for row in read_rounds(run_dir)] == ["1", "2", "3", "4"]
    assert read_rounds(run_dir)[-1]["sites"] == "4"


def test_a_lost_redis_stops_the_run_and_resume_works_once_it_is_back(tmp_path: Path) -> None:
    slow = ["--local_epochs", "15", "--rounds", "5", "--store.backend", "redis"]
    with redis_server() as port:
        process = start([*slow, "--store.port", str(port), "--runs_dir", str(tmp_path)], tmp_path)
        wait_for_line(process, "round   2/5")
    # The server is gone now (the context stopped it).
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 3, stderr
    assert "error: run stopped:" in stderr
    assert f"127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr
    run_dir = only_run_dir(tmp_path)
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert latest in ("round-0002", "round-0003")

    down = run_cli("--resume", str(run_dir), cwd=tmp_path)
    assert down.returncode == 2
    assert f"redis at 127.0.0.1:{port} is unreachable" in down.stderr

    with redis_server(port=port) as same_port:
        resumed = run_cli("--resume", str(run_dir), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert redis_keys(same_port) == []
    assert [row["round"] for row in read_rounds(run_dir)] == ["1", "2", "3", "4", "5"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB file system (tmpfs, this test's own), which a run fills within a round."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_is_one_line_naming_where(tmp_path: Path, tiny_disk: Path) -> None:
    done = run_cli("--rounds", "3", "--runs_dir", str(tiny_disk / "runs"), cwd=tmp_path)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[:2000]  # not thousands of logging tracebacks
    assert lines[0].startswith("error: run stopped: no space left on the device holding ")
    assert str(tiny_disk / "runs") in lines[0]


def test_an_aggregate_that_finds_its_store_gone_stops_the_run(tmp_path: Path) -> None:
    """The server goes after the sites put their updates and before the aggregator reads them.

    The aggregate app then fails with the Redis client's own ``ConnectionError``; asking the
    store tells that apart from a bug, and the run stops (resumable) naming the server.
    """
    port = free_port("127.0.0.1")
    server = subprocess.Popen(
        redis_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_redis(server, "127.0.0.1", port)

        def aggregate_once_the_server_is_gone(*args: Any, **kwargs: Any) -> Any:
            server.terminate()
            server.wait(timeout=10)
            return aggregate_updates(*args, **kwargs)

        config = load_experiment(
            DEFAULT_EXPERIMENT,
            {"rounds": 2, "runs_dir": str(tmp_path), "store.backend": "redis", "store.port": port},
        )
        run_dir = create_run_dir(config.runs_dir, config.name)
        with pytest.raises(RunStoppedError, match=f"lost the store .*127.0.0.1:{port}") as stop:
            run_federation(
                config, load_deployment("local.py"), run_dir, progress=lambda line: None,
                bodies=AppBodies(aggregate=aggregate_once_the_server_is_gone, prime=None),
            )  # fmt: skip
        assert "ConnectionError" in str(stop.value)
        assert "\n" not in str(stop.value)
        assert not (run_dir / "checkpoints" / "round-0001").exists()
    finally:
        server.terminate()
        server.wait(timeout=10)
