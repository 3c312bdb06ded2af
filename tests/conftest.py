"""Shared helpers: run the workflow in-process (threads) or as the real CLI (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxyflox.config import load_experiment
from proxyflox.results import create_run_dir
from proxyflox.rounds import RunResult, run_federation
from proxyflox.sites import load_parsl_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXPERIMENT = ROOT / "experiments" / "digits_fedavg.yaml"
CLI = ROOT / "workflows" / "fedavg.py"


@pytest.fixture
def run_local(tmp_path: Path) -> Callable[..., RunResult]:
    """Run the default experiment in this process on ``parsl_configs/local.py`` (threads)."""

    def run(config: str = "local.py", **overrides: Any) -> RunResult:
        overrides.setdefault("runs_dir", str(tmp_path / "runs"))
        experiment = load_experiment(DEFAULT_EXPERIMENT, overrides)
        run_dir = create_run_dir(experiment.runs_dir, experiment.name)
        return run_federation(
            experiment, load_parsl_config(config), run_dir, progress=lambda line: None
        )

    return run


def bare_env() -> dict[str, str]:
    """An environment without an activated venv: the venv's bin is not on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != venv_bin
    )
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python workflows/fedavg.py ARGS`` as a user runs it, without an activated venv."""
    return subprocess.run(
        [sys.executable, str(CLI), *args],
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
