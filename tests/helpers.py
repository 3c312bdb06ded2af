"""Helpers shared by the tests: paths, and running the real CLI as a user would."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXPERIMENT = ROOT / "experiments" / "digits_fedavg.yaml"
CLI = ROOT / "workflows" / "fedavg.py"


def bare_env() -> dict[str, str]:
    """An environment without an activated venv: the venv's bin is not on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin
    )
    return env


def cli_command(*args: str) -> list[str]:
    """The command line ``python workflows/fedavg.py ARGS``, by this interpreter's path."""
    return [sys.executable, str(CLI), *args]


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python workflows/fedavg.py ARGS`` as a user runs it, without an activated venv."""
    return subprocess.run(
        cli_command(*args),
        cwd=cwd,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_run_dir(runs_dir: Path) -> Path:
    """The single run directory a test's run created."""
    (run_dir,) = list(runs_dir.iterdir())
    return run_dir


def put_routes(run_dir: Path) -> dict[str, set[str]]:
    """Executor label -> the connectors its processes put into (from the access log).

    A process that trained no site (none of `sites.csv`'s pids) is the aggregator's.
    """
    with open(run_dir / "sites.csv", newline="") as file:
        executor_of = {row["pid"]: row["executor"] for row in csv.DictReader(file)}
    puts: dict[str, set[str]] = {}
    for line in (run_dir / "store-access.log").read_text().splitlines():
        pid, op, key = line.split("\t")
        if op == "put":
            name = re.match(r"MultiKey\(connector_name='([^']+)'", key)
            assert name is not None, key
            puts.setdefault(executor_of.get(pid, "aggregator"), set()).add(name.group(1))
    return puts


def experiment_model(config: Any) -> Any:
    """The experiment's initial model, as the init app builds it."""
    from proxyflox.apps import new_model
    from proxyflox.controller.planner import model_spec
    from proxyflox.data import dataset_info

    return new_model(model_spec(config), dataset_info(config.dataset, config.data_dir))


def experiment_setup(config: Any, num_sites: int = 4) -> Any:
    """What an executor without options of its own is told (the experiment's values)."""
    from proxyflox.controller.planner import site_setup
    from proxyflox.settings import SiteOptions

    return site_setup(config, SiteOptions(), num_sites)
