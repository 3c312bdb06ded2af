"""Fixtures: run the workflow in this process on threads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxyflox.controller import RunResult, run_federation
from proxyflox.results import create_run_dir
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from tests.helpers import DEFAULT_EXPERIMENT


@pytest.fixture
def run_local(tmp_path: Path) -> Callable[..., RunResult]:
    """Run the default experiment in this process on ``parsl_configs/local.py`` (threads)."""

    def run(config: str = "local.py", **overrides: Any) -> RunResult:
        overrides.setdefault("runs_dir", str(tmp_path / "runs"))
        experiment = load_experiment(DEFAULT_EXPERIMENT, overrides)
        run_dir = create_run_dir(experiment.runs_dir, experiment.name)
        return run_federation(
            experiment, load_deployment(config), run_dir, progress=lambda line: None
        )

    return run
