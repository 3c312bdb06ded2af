"""Checkpoints: everything a stopped synchronous run needs to continue as if it never stopped.

After every round the aggregator writes ``checkpoints/round-NNNN/`` (the new global model and
the strategy state, as ``.npz`` files: plain arrays, nothing is unpickled on resume). Once the
aggregate has returned (and the next round's train apps are out), the controller writes the
round's ``sites.csv`` rows and, beside the checkpoint, its ``rounds.csv`` row less the
evaluation (``row.json``), then points ``checkpoints/latest`` at it and removes older
checkpoints. The evaluation runs on while the next round trains; a resumed run whose
``rounds.csv`` lacks the checkpoint's round evaluates the checkpoint again and writes that row
first. Every random draw in a run is derived from (seed, round, site), so the round number is
the whole random state; the rounds so far are the rows of ``rounds.csv`` and ``sites.csv`` up
to that round.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proxyflox.errors import ConfigError, short_repr
from proxyflox.schema import read_yaml_mapping
from proxyflox.settings import ExperimentConfig, experiment_from_dict
from proxyflox.strategies import STRATEGIES
from proxyflox.weights import Weights, flatten_state, unflatten_state

CHECKPOINTS = "checkpoints"
LATEST = "latest"
WEIGHTS_FILE = "weights.npz"
STATE_FILE = "state.npz"
#: A checkpointed round's ``rounds.csv`` row less its evaluation, and its partition rows (JSON).
PENDING_ROW_FILE = "row.json"
#: Files a run keeps per round, which ``--resume`` cuts back to the checkpoint's round.
ROUND_LOGS = ("rounds.csv", "sites.csv")


def checkpoint_dir(run_dir: str | Path, round_number: int) -> Path:
    """The directory of a run's checkpoint after round ``round_number``."""
    return Path(run_dir) / CHECKPOINTS / f"round-{round_number:04d}"


def write_checkpoint(directory: str | Path, weights: Weights, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a temporary directory renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    np.savez(staging / WEIGHTS_FILE, **weights)  # type: ignore[arg-type]
    np.savez(staging / STATE_FILE, **flatten_state(state))  # type: ignore[arg-type]
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(staging, directory)


def read_checkpoint(directory: str | Path) -> tuple[Weights, dict[str, Any]]:
    """Weights and strategy state of a checkpoint (``allow_pickle=False``: arrays only).

    Raises:
        ConfigError: if a file is missing or unreadable.
    """
    directory = Path(directory)
    try:
        with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as archive:
            weights = {name: archive[name] for name in archive.files}
        with np.load(directory / STATE_FILE, allow_pickle=False) as archive:
            state = unflatten_state({name: archive[name] for name in archive.files})
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError(
            f"resume: checkpoint {directory} cannot be read ({type(err).__name__}: {err})"
        ) from None
    if not weights:
        raise ConfigError(f"resume: checkpoint {directory} holds no weights")
    return weights, state


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a run directory holds a complete checkpoint (``--resume`` can continue it)."""
    return (Path(run_dir) / CHECKPOINTS / LATEST).is_file()


def write_pending_row(
    run_dir: str | Path,
    round_number: int,
    row: dict[str, Any],
    partition: list[dict[str, Any]],
) -> None:
    """Keep a round's row (less its evaluation) beside its checkpoint, atomically.

    Floats survive JSON exactly, so a resumed run writes the row the stopped one would have.
    """
    directory = checkpoint_dir(run_dir, round_number)
    staging = directory / f".{PENDING_ROW_FILE}.tmp"
    staging.write_text(json.dumps({"row": row, "partition": partition}, default=_plain))
    os.replace(staging, directory / PENDING_ROW_FILE)


def _plain(value: Any) -> Any:
    """NumPy scalars as the Python numbers they hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} in a round's row")


def read_pending_row(
    run_dir: str | Path, round_number: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The row and partition rows :func:`write_pending_row` kept for a round.

    Raises:
        ConfigError: if the file is missing or unreadable.
    """
    path = checkpoint_dir(run_dir, round_number) / PENDING_ROW_FILE
    try:
        data = json.loads(path.read_text())
        return dict(data["row"]), list(data["partition"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"resume: {path} cannot be read ({type(err).__name__}: {err})") from None


def mark_complete(run_dir: str | Path, round_number: int) -> None:
    """Point ``checkpoints/latest`` at this round's checkpoint; drop older ones.

    Called once the checkpoint, the round's ``sites.csv`` rows and its pending row are
    written, and the previous round's ``rounds.csv`` row too (its checkpoint goes now).
    """
    root = Path(run_dir) / CHECKPOINTS
    latest = root / LATEST
    staging = root / f".{LATEST}.tmp"
    staging.write_text(f"{checkpoint_dir(run_dir, round_number).name}\n")
    os.replace(staging, latest)
    for old in root.glob("round-*"):
        if old.name < f"round-{round_number:04d}":
            shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class ResumePoint:
    """Where a stopped run continues: its settings, Parsl config and last complete round."""

    run_dir: Path
    config: ExperimentConfig
    parsl_config: str
    round_number: int

    @property
    def checkpoint(self) -> Path:
        """The directory of the checkpoint the run continues from."""
        return checkpoint_dir(self.run_dir, self.round_number)


def find_resume_point(run_dir: str | Path) -> ResumePoint:
    """Check a run directory for ``--resume`` and read what it needs.

    Raises:
        ConfigError: naming what is missing or corrupt.
    """
    run_dir = Path(run_dir)
    where = f"resume: {run_dir}"
    if not run_dir.is_dir():
        raise ConfigError(f"{where} is not a directory")
    data = read_yaml_mapping(
        run_dir / "config.yaml",
        f"{where}/config.yaml",
        missing=f"{where} has no config.yaml; is it a run directory?",
    )
    if "parsl_config" not in data:
        raise ConfigError(f"{where}/config.yaml is not a ProxyFlox run's settings")
    parsl_config = str(data.pop("parsl_config"))
    config = experiment_from_dict(data)
    if STRATEGIES[config.strategy.name].asynchronous:
        raise ConfigError(f"{where}: asynchronous runs ({config.strategy.name}) cannot be resumed")
    latest = run_dir / CHECKPOINTS / LATEST
    if not latest.is_file():
        raise ConfigError(
            f"{where} has no complete checkpoint (it stopped before its first round finished); "
            "start a new run"
        )
    name = latest.read_text().strip()
    try:
        round_number = int(name.removeprefix("round-"))
    except ValueError:
        raise ConfigError(f"{where}: {latest} is corrupt ({name!r})") from None
    point = ResumePoint(run_dir, config, parsl_config, round_number)
    read_checkpoint(point.checkpoint)  # fail now, not on the aggregator, if it is corrupt
    for name in ROUND_LOGS:
        _check_round_log(run_dir / name, where)
    evaluated = _has_row(run_dir, round_number)
    if round_number >= config.rounds and evaluated:
        raise ConfigError(f"{where} already finished all {config.rounds} rounds")
    if not evaluated:
        read_pending_row(run_dir, round_number)  # the row its evaluation completes
    return point


def _has_row(run_dir: Path, round_number: int) -> bool:
    """Whether ``rounds.csv`` holds the round's row (its evaluation came back)."""
    path = run_dir / "rounds.csv"
    if not path.exists():
        return False
    with open(path, newline="", encoding="utf-8") as file:
        return any(int(row["round"]) == round_number for row in csv.DictReader(file))


def _check_round_log(path: Path, where: str) -> None:
    """A round log must be readable before resuming rewrites it (its rows are the results)."""
    if not path.exists():
        return
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            if "round" not in (reader.fieldnames or []):
                raise ValueError("no 'round' column")
            for line, row in enumerate(reader, start=2):
                if not str(row["round"]).isdigit():
                    raise ValueError(f"line {line}: round {short_repr(row['round'])}")
    except (ValueError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{where}/{path.name} is corrupt ({err}); nothing was changed") from None


def truncate_round_logs(run_dir: Path, round_number: int) -> None:
    """Drop rows after ``round_number`` (written after the checkpoint, before the stop)."""
    for name in ROUND_LOGS:
        path = run_dir / name
        if not path.exists():
            continue
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            columns = reader.fieldnames or []
            rows = [row for row in reader if int(row["round"]) <= round_number]
        staging = path.with_suffix(".tmp")
        with open(staging, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(staging, path)


def accepted_rounds(run_dir: Path) -> dict[int, int]:
    """Each site's last round whose update was aggregated, from ``sites.csv`` (for a resume)."""
    path = run_dir / "sites.csv"
    accepted: dict[int, int] = {}
    if path.exists():
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                accepted[int(row["site"])] = int(row["round"])
    return accepted
