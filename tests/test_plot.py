"""Plots: written at the end of a run and on demand, for one run or several compared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proxyflox.controller import run_federation
from proxyflox.plot import PHASES, load_run, plot_comparison
from proxyflox.results import create_run_dir
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from tests.helpers import DEFAULT_EXPERIMENT, ROOT, bare_env


def assert_is_a_drawn_png(path: Path, min_width: int = 600) -> None:
    """A PNG of a sensible size with a drawing on it, not a blank canvas."""
    assert path.stat().st_size > 10_000, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width
        assert image.height >= 300
        pixels = np.asarray(image.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"{path} looks blank"
    assert (pixels < 250).any(axis=2).mean() > 0.02, f"{path} has almost nothing drawn"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two short runs on local.py (threads): IID, and Dirichlet with local evaluation."""
    runs = tmp_path_factory.mktemp("runs")
    dirs = []
    for overrides in (
        {"rounds": 3, "name": "iid"},
        {"rounds": 3, "name": "dirichlet", "partition": "dirichlet", "evaluate_sites": "true"},
    ):
        experiment = load_experiment(DEFAULT_EXPERIMENT, {"runs_dir": str(runs), **overrides})
        run_dir = create_run_dir(experiment.runs_dir, experiment.name)
        run_federation(experiment, load_deployment("local.py"), run_dir, progress=lambda _: None)
        dirs.append(run_dir)
    return dirs


def test_a_run_writes_its_plots_at_the_end(two_runs: list[Path]) -> None:
    for run_dir in two_runs:
        for name in ("accuracy.png", "times.png", "partition.png"):
            assert_is_a_drawn_png(run_dir / name)


def test_the_time_breakdown_adds_up_to_the_round_time(two_runs: list[Path]) -> None:
    run = load_run(two_runs[1])
    phases = run.phase_seconds()
    assert set(phases) == {*PHASES, "other"}
    for index, round_seconds in enumerate(run.series("round_seconds")):
        accounted = sum(values[index] for phase, values in phases.items() if phase != "other")
        # The bar is the controller's round time, unless the phases' sum is longer.
        assert accounted + phases["other"][index] == pytest.approx(max(round_seconds, accounted))
        assert phases["train"][index] == run.series("train_seconds_max")[index] > 0
    # Local evaluation shows up per site.
    assert all(0 <= value <= 1 for value in run.series("site3_accuracy"))


def test_several_runs_on_one_figure(two_runs: list[Path], tmp_path: Path) -> None:
    out = plot_comparison(two_runs, tmp_path / "compare.png")
    assert_is_a_drawn_png(out, min_width=1200)


def test_plot_command_for_one_run_and_for_a_comparison(
    two_runs: list[Path], tmp_path: Path
) -> None:
    (two_runs[0] / "times.png").unlink()
    one = subprocess.run(
        [sys.executable, "-m", "proxyflox.plot", str(two_runs[0])],
        cwd=ROOT,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    assert_is_a_drawn_png(two_runs[0] / "times.png")
    assert str(two_runs[0] / "accuracy.png") in one.stdout

    several = subprocess.run(
        [sys.executable, "-m", "proxyflox.plot", *map(str, two_runs)],
        cwd=tmp_path,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert several.returncode == 0, several.stderr
    assert_is_a_drawn_png(tmp_path / "comparison.png", min_width=1200)

    not_a_run = subprocess.run(
        [sys.executable, "-m", "proxyflox.plot", str(tmp_path), "--out", str(tmp_path / "x.png")],
        cwd=tmp_path,
        env=bare_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not_a_run.returncode == 2
    assert "has no rounds.csv" in not_a_run.stderr
    assert not (tmp_path / "x.png").exists()
