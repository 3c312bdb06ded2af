"""The run's records as the controller writes them.

``rounds.csv``, ``sites.csv``, ``updates.csv`` and ``partition.csv`` (formats in
:mod:`proxyflox.results`).

Every row is flushed as it is written, so a stopped run keeps every finished round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from proxyflox.messages import AggregateResult, Evaluation, TrainResult
from proxyflox.results import (
    ASYNC_ROUND_COLUMNS,
    PARTITION_FILE,
    SITE_COLUMNS,
    UPDATE_COLUMNS,
    CsvLog,
    round_columns,
    write_partition,
)


class RunRecords:
    """The CSV files of one run.

    Args:
        run_dir: The run's directory.
        placement: Executor label of each site.
        asynchronous: One row per global version and an ``updates.csv`` instead of rounds.
        evaluate_sites: ``rounds.csv`` has each site's local accuracy and loss.
        report_columns: The strategy's own columns of ``rounds.csv`` (dpfedavg's epsilon).
    """

    def __init__(
        self,
        run_dir: Path,
        placement: Sequence[str],
        *,
        asynchronous: bool = False,
        evaluate_sites: bool = False,
        report_columns: Sequence[str] = (),
    ) -> None:
        self.run_dir = run_dir
        self.placement = placement
        columns = (
            ASYNC_ROUND_COLUMNS if asynchronous else round_columns(len(placement), evaluate_sites)
        ) + list(report_columns)
        self.rounds = CsvLog(run_dir / "rounds.csv", columns)
        self.sites = CsvLog(run_dir / "sites.csv", SITE_COLUMNS)
        self.updates = CsvLog(run_dir / "updates.csv", UPDATE_COLUMNS) if asynchronous else None

    def __enter__(self) -> RunRecords:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every file."""
        for log in (self.rounds, self.sites, self.updates):
            if log is not None:
                log.close()

    def write_round(self, row: Mapping[str, Any]) -> None:
        """One row of ``rounds.csv``."""
        self.rounds.write(row)

    def write_sites(self, round_number: int, results: Sequence[TrainResult]) -> None:
        """One row of ``sites.csv`` per site that returned an update in this round."""
        self.sites.write_many(
            {"round": round_number, "executor": self.placement[result.site]}
            | {key: getattr(result, key) for key in SITE_COLUMNS if hasattr(result, key)}
            for result in results
        )

    def write_update(self, row: Mapping[str, Any], result: TrainResult) -> None:
        """One row of ``updates.csv`` (asynchronous runs): when and how stale an update was."""
        assert self.updates is not None, "updates.csv belongs to asynchronous runs"
        measured = {
            key: getattr(result, key)
            for key in UPDATE_COLUMNS
            if key not in row and hasattr(result, key)
        }
        self.updates.write({"executor": self.placement[result.site]} | measured | dict(row))

    def partition_rows(
        self, split: str, results: Sequence[TrainResult | Evaluation]
    ) -> list[dict[str, Any]]:
        """``partition.csv``'s rows of one split, from the class counts the sites reported.

        The controller never loads data to know how it is split.
        """
        return [
            {
                "site": result.site,
                "executor": self.placement[int(result.site or 0)],
                "split": split,
                "class_counts": result.class_counts,
            }
            for result in results
        ]

    def write_partition(
        self, train_rows: Sequence[Mapping[str, Any]], local_evaluations: Sequence[Evaluation]
    ) -> None:
        """``partition.csv``: the train rows (:meth:`partition_rows`) and the local test sets."""
        rows = [*train_rows, *self.partition_rows("test", local_evaluations)]
        write_partition(self.run_dir / PARTITION_FILE, rows)


def round_row(
    round_number: int,
    updates: Sequence[TrainResult],
    late: Sequence[int],
    failed: Mapping[int, str],
    aggregate: AggregateResult,
    round_seconds: float,
) -> dict[str, Any]:
    """A synchronous round's ``rounds.csv`` row, less its evaluation (:func:`evaluation_columns`).

    Only numbers, strings and lists: the row is kept as JSON until its evaluation is in.
    """
    samples = sum(update.num_samples for update in updates)
    row: dict[str, Any] = {
        "round": round_number,
        "sites": len(updates),
        "site_ids": " ".join(str(update.site) for update in updates),
        "late_site_ids": " ".join(str(site) for site in late),
        "failed_site_ids": " ".join(str(site) for site in failed),
        "failures": summarize_failures(failed),
        "round_seconds": round_seconds,
        "train_seconds_max": max(update.train_seconds for update in updates),
        "resolve_seconds_max": max(update.resolve_seconds for update in updates),
        "put_seconds_max": max(update.put_seconds for update in updates),
        "aggregate_seconds": aggregate.aggregate_seconds,
        "aggregate_resolve_seconds": aggregate.resolve_seconds,
        "aggregate_put_seconds": aggregate.put_seconds,
        "checkpoint_seconds": aggregate.checkpoint_seconds,
        "model_bytes": aggregate.model_bytes,
        "train_loss": sum(u.train_loss * u.num_samples for u in updates) / samples,
    } | traffic(updates, aggregate)
    for update in updates:
        row[f"site{update.site}_train_seconds"] = update.train_seconds
        row[f"site{update.site}_resolve_seconds"] = update.resolve_seconds
    return row


def evaluation_columns(
    evaluation: Evaluation, local_evaluations: Sequence[Evaluation]
) -> dict[str, Any]:
    """The columns of a round's row that its global (and local) evaluations fill in."""
    columns: dict[str, Any] = {
        "accuracy": evaluation.accuracy,
        "loss": evaluation.loss,
        "evaluate_seconds": evaluation.evaluate_seconds,
    }
    for local in local_evaluations:
        columns[f"site{local.site}_accuracy"] = local.accuracy
        columns[f"site{local.site}_loss"] = local.loss
    return columns


def traffic(updates: Sequence[TrainResult], aggregate: AggregateResult) -> dict[str, Any]:
    """What the updates of one aggregation cost on the wire: bytes, encode and decode time."""
    return {
        "sent_bytes": sum(update.sent_bytes for update in updates),
        "raw_bytes": sum(update.raw_bytes for update in updates),
        "encode_seconds_max": max(update.encode_seconds for update in updates),
        "decode_seconds": aggregate.decode_seconds,
    }


def summarize_failures(failed: Mapping[int, str]) -> str:
    """``site 3: why; sites 0 1 2: why`` (sites failing for the same reason share one entry)."""
    by_reason: dict[str, list[int]] = {}
    for site, why in failed.items():
        by_reason.setdefault(why, []).append(site)
    parts = []
    for why, sites in by_reason.items():
        shown = " ".join(map(str, sites[:5])) + (
            f" (+{len(sites) - 5} more)" if len(sites) > 5 else ""
        )
        parts.append(f"site{'s' if len(sites) > 1 else ''} {shown}: {why}")
    return "; ".join(parts)


def failure_reason(error: BaseException | None) -> str:
    """One line on why an app failed."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    # Long reasons (a worker's captured stderr) keep their start and their end, where the
    # actual cause (e.g. ssh's own message) usually is.
    return text if len(text) <= 2000 else f"{text[:800]} ... {text[-1100:]}"
