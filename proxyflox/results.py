"""What a run leaves behind: its directory, ``config.yaml``, ``rounds.csv`` and ``sites.csv``."""

from __future__ import annotations

import csv
import fcntl
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

ROUND_COLUMNS = [
    "round",
    "sites",  # how many sites contributed to this round's aggregate
    "site_ids",  # which ones, space-separated
    "late_site_ids",  # sites that missed round_deadline (their updates were dropped)
    "failed_site_ids",  # sites whose train app failed, after Parsl's retries
    "failures",  # why, per failed site
    "accuracy",
    "loss",
    "round_seconds",  # controller clock: first train submitted -> evaluation returned
    "train_seconds_max",
    "resolve_seconds_max",  # sites resolving the global model
    "put_seconds_max",  # sites putting their update
    "aggregate_seconds",
    "aggregate_resolve_seconds",  # aggregator resolving all updates
    "aggregate_put_seconds",  # aggregator putting the new global model
    "checkpoint_seconds",  # aggregator writing the round's checkpoint
    "evaluate_seconds",
    "model_bytes",
    "train_loss",  # sample-weighted mean of the sites' last-epoch training loss
    "sent_bytes",  # the round's updates as the sites put them (encoded), summed
    "raw_bytes",  # the same updates' arrays before encoding, summed
    "encode_seconds_max",  # sites encoding their update (inside put_seconds)
    "decode_seconds",  # aggregator decoding the updates (inside aggregate_resolve_seconds)
]
SITE_COLUMNS = [
    "round", "site", "executor", "host", "pid", "netns", "batch_job", "device", "num_samples",
    "local_epochs", "batch_size", "train_loss", "resolve_seconds", "train_seconds", "put_seconds",
    "sent_bytes", "raw_bytes", "encode_seconds",
]  # fmt: skip


def create_run_dir(runs_dir: str | Path, experiment: str) -> Path:
    """``runs/<experiment>-<YYYYmmdd-HHMMSS>``, private to the user (mode 0700), never reused."""
    parent = Path(runs_dir)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        suffix = "" if attempt == 0 else f"-{attempt}"
        path = parent / f"{experiment}-{stamp}{suffix}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        path.chmod(0o700)
        return path
    raise FileExistsError(f"no free run directory name under {parent} for {experiment}-{stamp}")


#: Held (``flock``) by the process running a run directory, for as long as it runs.
LOCK_FILE = ".lock"


class RunDirInUseError(RuntimeError):
    """Another process runs this run directory (a second ``--resume`` of it, say)."""


def lock_run_dir(run_dir: Path) -> IO[str]:
    """Take the run directory for this process; the lock goes when the process ends.

    Raises:
        RunDirInUseError: another live process holds it (the message names its pid).
    """
    handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held until the process exits)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirInUseError(
            f"{run_dir} is in use by another run (pid {holder}); one process per run directory"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class CsvLog:
    """A CSV file written row by row and flushed, so a stopped run keeps every finished round."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        new = not path.exists()
        self._file = open(path, "a", newline="")  # noqa: SIM115 (closed in close())
        # Rows may carry more than the columns (e.g. per-site numbers above MAX_SITE_COLUMNS).
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        """Append a row and sync it to disk; keys that are not columns are left out."""
        self.write_many([row])

    def write_many(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows and sync them to disk once (one sync per row is ~1 ms each)."""
        for row in rows:
            self._writer.writerow({key: _format(value) for key, value in row.items()})
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


#: ``rounds.csv`` of an asynchronous run: one row per aggregation (global version).
ASYNC_ROUND_COLUMNS = [
    "round",  # the global version this aggregation made
    "sites", "site_ids", "staleness",  # the updates aggregated and their staleness
    "updates_total",  # updates received so far
    "seconds",  # controller clock since the initial model was ready
    "accuracy", "loss", "aggregate_seconds", "aggregate_resolve_seconds", "evaluate_seconds",
    "model_bytes", "sent_bytes", "raw_bytes", "encode_seconds_max", "decode_seconds",
]  # fmt: skip
#: ``updates.csv`` of an asynchronous run: every update as it arrived; ``rejected``: why the
#: aggregator left it out (empty: used, or still buffered when the budget was spent).
UPDATE_COLUMNS = [
    "update", "site", "executor", "version_started", "staleness", "seconds", "num_samples",
    "train_loss", "resolve_seconds", "train_seconds", "put_seconds", "host", "pid",
    "sent_bytes", "raw_bytes", "encode_seconds", "rejected",
]  # fmt: skip

#: Above this many sites, per-site numbers are in ``sites.csv`` only (not one column each).
MAX_SITE_COLUMNS = 64


def round_columns(num_sites: int, evaluate_sites: bool = False) -> list[str]:
    """Columns of ``rounds.csv``.

    The round summary, then each site's train and resolve seconds, then (``evaluate_sites``)
    each site's local accuracy and loss; the per-site columns only for up to
    :data:`MAX_SITE_COLUMNS` sites.
    """
    if num_sites > MAX_SITE_COLUMNS:
        return list(ROUND_COLUMNS)
    per_site = [
        f"site{site}_{what}_seconds" for site in range(num_sites) for what in ("train", "resolve")
    ]
    if evaluate_sites:
        per_site += [
            f"site{site}_{what}" for site in range(num_sites) for what in ("accuracy", "loss")
        ]
    return ROUND_COLUMNS + per_site


#: Samples per class per site, written once the first round's sites have reported.
PARTITION_FILE = "partition.csv"


def write_partition(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``partition.csv``: one row per site and split, with its samples.

    The splits are ``train`` and, for the local test sets of ``evaluate_sites``, ``test``; each
    row counts the samples in total and per class.

    Args:
        path: The file to write.
        rows: ``{"site", "executor", "split", "class_counts"}`` each, as the sites counted them.
    """
    num_classes = max(len(row["class_counts"]) for row in rows)
    columns = ["site", "executor", "split", "samples"] + [f"class_{c}" for c in range(num_classes)]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for row in rows:
            counts = list(row["class_counts"])
            writer.writerow([row["site"], row["executor"], row["split"], sum(counts), *counts])


def read_partition(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a run's ``partition.csv`` (empty if the run wrote none)."""
    path = Path(run_dir) / PARTITION_FILE
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def read_rounds(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of a run's ``rounds.csv``."""
    with open(Path(run_dir) / "rounds.csv", newline="") as file:
        return list(csv.DictReader(file))
