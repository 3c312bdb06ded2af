"""Checkpoints and --resume with real faults: the controller SIGKILLed mid-run, then resumed,
ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from proxyflox.results import read_rounds
from tests.helpers import CLI, bare_env, only_run_dir, run_cli


def is_timing(column: str) -> bool:
    """Columns that hold measured times (they differ between any two runs)."""
    return column.endswith("_seconds") or column.endswith("_seconds_max")


def comparable(run_dir: Path, name: str = "rounds.csv") -> list[dict[str, str]]:
    with open(run_dir / name, newline="") as file:
        rows = list(csv.DictReader(file))
    drop = {"pid", "host"}
    return [{k: v for k, v in row.items() if not is_timing(k) and k not in drop} for row in rows]


def start_run(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start a run in a session of its own (so that its whole process group can be killed)."""
    return subprocess.Popen(
        [sys.executable, str(CLI), *args],
        cwd=cwd, env=bare_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip


def kill_after_round(args: list[str], cwd: Path, round_number: int) -> Path:
    """Start a run, SIGKILL its whole process group once round N's line is printed."""
    process = start_run(args, cwd)
    assert process.stdout is not None
    run_dir = None
    for line in process.stdout:
        if line.startswith("run directory: "):
            run_dir = Path(line.removeprefix("run directory: ").strip())
        if line.startswith(f"round {round_number:>3}/"):
            os.killpg(process.pid, signal.SIGKILL)
            break
    return stopped(process, run_dir, cwd)


def kill_once_checkpointed(args: list[str], cwd: Path, round_number: int) -> Path:
    """Start a run, SIGKILL its whole process group as soon as round N's checkpoint is marked:
    right after its aggregation, while its evaluation is still in flight."""
    process = start_run(args, cwd)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first.startswith("run directory: "), first
    run_dir = Path(first.removeprefix("run directory: ").strip())
    latest = (cwd / run_dir) / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if latest.read_text().strip() == f"round-{round_number:04d}":
                os.killpg(process.pid, signal.SIGKILL)
                break
        time.sleep(0.001)
    return stopped(process, run_dir, cwd)


def stopped(process: subprocess.Popen[str], run_dir: Path | None, cwd: Path) -> Path:
    """Wait for a SIGKILLed run and kill what is left of its worker pools."""
    process.wait(timeout=60)
    assert run_dir is not None
    assert process.returncode == -signal.SIGKILL
    # Worker pools started in other sessions die once they lose the interchange; don't wait.
    for leftover in psutil.process_iter(["cmdline"]):
        if str(run_dir) in " ".join(leftover.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):  # its spawned workers name no run dir
                for worker in leftover.children(recursive=True):
                    worker.kill()
                leftover.kill()
    return cwd / run_dir if not run_dir.is_absolute() else run_dir


def straight_and_stopped(common: list[str], tmp_path: Path, round_number: int) -> tuple[Path, Path]:
    """The run directories of a run straight through and of one killed after a round."""
    straight = run_cli(*common, "--runs_dir", str(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    straight_dir = only_run_dir(tmp_path / "straight")
    runs = ["--runs_dir", str(tmp_path / "stopped")]
    return straight_dir, kill_after_round([*common, *runs], tmp_path, round_number)


@pytest.mark.parametrize(
    "config", ["local.py", pytest.param("local_htex.py", marks=pytest.mark.slow)]
)
def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path: Path, config: str) -> None:
    common = ["--config", config, "--rounds", "6", "--strategy.name", "fedadam",
              "--partition", "dirichlet", "--alpha", "0.5"]  # fmt: skip
    straight_dir, stopped_dir = straight_and_stopped(common, tmp_path, 3)
    # Round 3's row comes once round 4 has trained: round 4 may have been checkpointed as well.
    latest = (stopped_dir / "checkpoints" / "latest").read_text().strip()
    assert latest in ("round-0003", "round-0004")
    assert not (stopped_dir / "model.pt").exists()

    resumed = run_cli("--resume", str(stopped_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {stopped_dir} after round {latest[-1]}" in resumed.stdout
    assert "round   4/6" in resumed.stdout
    assert "round   1/6" not in resumed.stdout

    a = torch.load(straight_dir / "model.pt")
    b = torch.load(stopped_dir / "model.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(stopped_dir) == comparable(straight_dir)
    assert comparable(stopped_dir, "sites.csv") == comparable(straight_dir, "sites.csv")
    assert [c.name for c in (stopped_dir / "checkpoints").iterdir() if c.is_dir()] == ["round-0006"]


def same_results(a: Path, b: Path) -> None:
    """Two run directories hold the same model and the same rows (but for timings)."""
    first, second = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    for name in ("rounds.csv", "sites.csv", "partition.csv"):
        assert comparable(a, name) == comparable(b, name), name


def test_killed_before_an_evaluation_returned_resumes_by_evaluating_again(
    tmp_path: Path,
) -> None:
    common = ["--rounds", "3", "--evaluate_sites", "true", "--strategy.name", "fedadam"]
    straight = run_cli(*common, "--runs_dir", str(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    straight_dir = only_run_dir(tmp_path / "straight")

    # Round 1's model is checkpointed; its evaluation, row and partition.csv are not written.
    runs = str(tmp_path / "stopped")
    stopped_dir = kill_once_checkpointed([*common, "--runs_dir", runs], tmp_path, 1)
    assert read_rounds(stopped_dir) == []
    assert not (stopped_dir / "partition.csv").exists()
    assert [r["round"] for r in comparable(stopped_dir, "sites.csv")] == ["1"] * 4

    resumed = run_cli("--resume", str(stopped_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {stopped_dir} after round 1" in resumed.stdout
    assert [line[:9] for line in resumed.stdout.splitlines() if line.startswith("round ")] == [
        "round   1", "round   2", "round   3"
    ]  # fmt: skip
    same_results(stopped_dir, straight_dir)


def test_a_run_stopped_before_its_last_evaluation_resumes_to_write_only_that_row(
    tmp_path: Path,
) -> None:
    done = run_cli("--rounds", "3", "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    finished = tmp_path / "finished"
    shutil.copytree(run_dir, finished)
    # As if the controller died after the last round's checkpoint, before its evaluation.
    rounds = (run_dir / "rounds.csv").read_text().splitlines(keepends=True)
    (run_dir / "rounds.csv").write_text("".join(rounds[:-1]))

    resumed = run_cli("--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [line[:9] for line in resumed.stdout.splitlines() if line.startswith("round ")] == [
        "round   3"
    ]
    same_results(run_dir, finished)
    again = run_cli("--resume", str(run_dir), cwd=tmp_path)
    assert again.returncode == 2
    assert "already finished all 3 rounds" in again.stderr


def test_rows_written_after_the_last_checkpoint_are_dropped_on_resume(tmp_path: Path) -> None:
    done = run_cli("--rounds", "3", "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0
    run_dir = only_run_dir(tmp_path / "runs")
    # As if the controller died after round 3's rows but before marking its checkpoint.
    (run_dir / "checkpoints" / "latest").write_text("round-0002\n")
    shutil.copytree(run_dir / "checkpoints" / "round-0003", run_dir / "checkpoints" / "round-0002")
    with open(run_dir / "config.yaml") as file:
        settings = file.read()
    (run_dir / "config.yaml").write_text(settings.replace("rounds: 3", "rounds: 4"))
    resumed = run_cli("--resume", str(run_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [row["round"] for row in read_rounds(run_dir)] == ["1", "2", "3", "4"]


def test_checkpoint_time_is_recorded(tmp_path: Path) -> None:
    done = run_cli("--rounds", "2", "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 0
    rows = read_rounds(only_run_dir(tmp_path / "runs"))
    assert all(float(row["checkpoint_seconds"]) > 0 for row in rows)


def test_resume_refuses_a_corrupt_round_log_and_changes_nothing(tmp_path: Path) -> None:
    run_dir = kill_after_round(["--rounds", "6", "--runs_dir", "runs"], tmp_path, 2)
    rounds = run_dir / "rounds.csv"
    corrupt = rounds.read_text() + "not a round,at all\n"
    rounds.write_text(corrupt)
    done = run_cli("--resume", str(run_dir), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "rounds.csv is corrupt (line " in done.stderr
    assert "Traceback" not in done.stderr
    assert rounds.read_text() == corrupt  # nothing truncated or rewritten


def test_resume_onto_a_checkpoint_of_another_model_is_one_short_line(tmp_path: Path) -> None:
    run_dir = kill_after_round(["--rounds", "6", "--runs_dir", "runs"], tmp_path, 2)
    settings = run_dir / "config.yaml"
    settings.write_text(settings.read_text().replace("model: cnn", "model: depth_cnn"))
    rounds = (run_dir / "rounds.csv").read_text()
    done = run_cli("--resume", str(run_dir), cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert len(done.stderr) < 400  # not torch's 2 KB state_dict message
    assert "the checkpoint holds the weights of another model than depth_cnn" in done.stderr
    assert (run_dir / "rounds.csv").read_text() == rounds
