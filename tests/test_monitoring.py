"""Parsl's own monitoring: ``monitoring: true`` writes Parsl's database into the run directory,
and ``parsl-visualize`` shows the run's tasks in a real browser (headless Chromium).

Every process a test starts (the workflow, parsl-visualize, Chromium and its helpers) is
stopped again, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxyflox.controller import AppBodies, plan_run
from proxyflox.controller.runtime import MONITORING_DB, ParslRuntime
from proxyflox.errors import ConfigError
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from tests.helpers import DEFAULT_EXPERIMENT, bare_env, cli_command, only_run_dir
from tests.infra.common import (
    free_port,
    processes_mentioning,
    run_workflow,
    stop_process,
    wait_for,
)

BODIES = AppBodies()
#: The apps every round runs, named as Parsl records them (the functions' names).
ROUND_APPS = {BODIES.train.__name__: 8, BODIES.aggregate.__name__: 2, BODIES.evaluate.__name__: 2}
#: Where the screenshot of the workflow page goes besides the test's own directory
#: (``MONITORING_SCREENSHOT=docs/monitoring.png`` refreshes the README's picture).
SCREENSHOT_ENV = "MONITORING_SCREENSHOT"
WINDOW = (1000, 640)


def monitored_run(tmp_path: Path, config: str) -> Path:
    """Two rounds of the default experiment (4 sites) with monitoring on; its run directory."""
    runs = tmp_path / "runs"
    command = cli_command(
        "--config", config, "--rounds", "2", "--runs_dir", str(runs), "--monitoring", "true"
    )
    result = run_workflow(command, timeout=300, cwd=tmp_path, env=bare_env())
    assert result.returncode == 0, result.stderr
    run_dir = only_run_dir(runs)
    assert (run_dir / MONITORING_DB).is_file()
    return run_dir


def tasks_by_app(db: Path) -> dict[str, list[tuple[str, bool]]]:
    """Each app's tasks in Parsl's database: (executor, reached ``exec_done``) per task."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT task.task_func_name, try.task_executor, EXISTS ("
            "  SELECT 1 FROM status WHERE status.run_id = task.run_id"
            "  AND status.task_id = task.task_id AND status.task_status_name = 'exec_done')"
            " FROM task JOIN try ON try.run_id = task.run_id AND try.task_id = task.task_id"
        ).fetchall()
    found: dict[str, list[tuple[str, bool]]] = {}
    for app, executor, done in rows:
        found.setdefault(app, []).append((executor, bool(done)))
    return found


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def parsl_visualize(db: Path, log: Path) -> Iterator[str]:
    """``parsl-visualize`` over ``db`` on 127.0.0.1, a free port; yields its address."""
    binary = Path(sys.executable).parent / "parsl-visualize"
    assert binary.is_file(), "parsl-visualize is missing: pip install -e '.[dev]' (its extra)"
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary), f"sqlite:///{db}", "--listen", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            "parsl-visualize to listen", lambda: listening(port) or process.poll() is not None, 60
        )
        assert process.poll() is None, f"parsl-visualize exited: {log.read_text()[-2000:]}"
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def chromium(profile: Path, *args: str, timeout: float = 90) -> str:
    """Run headless Chromium with ``args`` to its end; its stdout.

    Its helper processes share its process group, which is killed afterwards whatever happened.
    """
    assert shutil.which("chromium"), "chromium is missing: scripts/test-servers.sh installs it"
    command = [
        "chromium",
        "--headless",
        # Chromium's sandbox refuses to run as root; the page is our own, served on loopback.
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        # The page links CDN scripts and styles: never reach outside this machine for them.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        *args,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, f"chromium {' '.join(args)} exited {process.returncode}"
    return stdout


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file (from its IHDR chunk)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_monitoring_page_lists_the_rounds_apps_in_chromium(tmp_path: Path) -> None:
    run_dir = monitored_run(tmp_path, "local.py")
    db = run_dir / MONITORING_DB
    profile = tmp_path / "chromium-profile"
    with parsl_visualize(db, tmp_path / "parsl-visualize.log") as address:
        index = chromium(profile, "--dump-dom", f"{address}/")
        # The workflow is listed under the run directory's name.
        links = re.findall(rf'href="(workflow/[^"/]+/)">{re.escape(run_dir.name)}</a>', index)
        assert links, index[-3000:]
        page_url = f"{address}/{links[0]}"
        page = chromium(profile, "--dump-dom", page_url)
        counts = dict(re.findall(r'<a href="app/(\w+)">\1</a></td>\s*<td>(\d+)</td>', page))
        assert {app: int(counts.get(app, 0)) for app in ROUND_APPS} == ROUND_APPS, counts
        shot = tmp_path / "monitoring.png"
        chromium(
            profile,
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            page_url,
        )
    assert png_size(shot) == WINDOW
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
    # Nothing the test started is left: no server over the database, no browser on the profile.
    assert processes_mentioning(str(db)) == []
    assert processes_mentioning(str(profile)) == []


@pytest.mark.slow
def test_monitoring_records_every_app_on_its_executor_with_htex(tmp_path: Path) -> None:
    tasks = tasks_by_app(monitored_run(tmp_path, "local_htex.py") / MONITORING_DB)
    assert {app: len(tasks.get(app, [])) for app in ROUND_APPS} == ROUND_APPS
    assert {executor for executor, _ in tasks[BODIES.train.__name__]} == {
        f"site-{i}" for i in range(4)
    }
    for app in (BODIES.aggregate.__name__, BODIES.evaluate.__name__):
        assert {executor for executor, _ in tasks[app]} == {"aggregator"}
    for app in ROUND_APPS:
        assert all(done for _, done in tasks[app])


def test_monitoring_off_leaves_the_parsl_config_as_it_is(tmp_path: Path) -> None:
    deployment = load_deployment("local.py")
    for monitoring in (False, True):
        experiment = load_experiment(DEFAULT_EXPERIMENT, {"monitoring": str(monitoring)})
        runtime = ParslRuntime(
            deployment.parsl_config,
            plan_run(experiment, deployment),
            tmp_path,
            None,
            experiment.retries,
            monitoring=experiment.monitoring,
        )
        if monitoring:
            hub = runtime.config.monitoring
            assert hub is not None
            assert hub.logging_endpoint == f"sqlite:///{tmp_path.resolve() / MONITORING_DB}"
        else:
            assert runtime.config.monitoring is None
    assert deployment.parsl_config.monitoring is None  # the module's own config is untouched


def test_monitoring_takes_yes_or_no() -> None:
    with pytest.raises(ConfigError, match=r"^monitoring: "):
        load_experiment(DEFAULT_EXPERIMENT, {"monitoring": "sometimes"})
