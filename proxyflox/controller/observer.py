"""Watching a run: the round loops call an observer at each event, in the controller's thread.

The command line prints one line per round through :class:`ProgressLines`; measurements record
timings through observers of their own. An observer only watches: it gets the typed records the
apps returned and the rows written, and must not change them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxyflox.messages import AggregateResult, Evaluation, TrainResult


class RunObserver:
    """Callbacks of a run, each a no-op here; override the ones you need."""

    def run_started(self, seconds: float) -> None:
        """The initial global model is ready, ``seconds`` after the run started."""

    def round_started(self, round_number: int, sites: Sequence[int]) -> None:
        """The round's train apps are about to be submitted (asynchronous runs: never)."""

    def site_returned(self, round_number: int, site: int) -> None:
        """A site's train app returned in time, with an update or failed (asynchronous: never).

        Called as each app returns, while the round waits for the others.
        """

    def trained(self, round_number: int, result: TrainResult) -> None:
        """A site's update arrived in time.

        In asynchronous runs ``round_number`` is the global version the update will count
        towards.
        """

    def aggregated(self, round_number: int, result: AggregateResult) -> None:
        """A new global model was made."""

    def evaluated(self, round_number: int, evaluation: Evaluation) -> None:
        """The global evaluation of the round's (or version's) model arrived."""

    def round_finished(self, round_number: int, row: Mapping[str, Any]) -> None:
        """The round's (or version's) row of ``rounds.csv`` was written."""


class ObserverList(RunObserver):
    """Several observers as one, called in order."""

    def __init__(self, observers: Sequence[RunObserver]) -> None:
        self.observers = list(observers)

    def run_started(self, seconds: float) -> None:
        """Pass the event on to each observer."""
        for observer in self.observers:
            observer.run_started(seconds)

    def round_started(self, round_number: int, sites: Sequence[int]) -> None:
        """Pass the event on to each observer."""
        for observer in self.observers:
            observer.round_started(round_number, sites)

    def site_returned(self, round_number: int, site: int) -> None:
        """Pass the event on to each observer."""
        for observer in self.observers:
            observer.site_returned(round_number, site)

    def trained(self, round_number: int, result: TrainResult) -> None:
        """Pass the event on to each observer."""
        for observer in self.observers:
            observer.trained(round_number, result)

    def aggregated(self, round_number: int, result: AggregateResult) -> None:
        """Pass the event on to each observer."""
        for observer in self.observers:
            observer.aggregated(round_number, result)

    def evaluated(self, round_number: int, evaluation: Evaluation) -> None:
        """Pass the event on to each observer."""
        for observer in self.observers:
            observer.evaluated(round_number, evaluation)

    def round_finished(self, round_number: int, row: Mapping[str, Any]) -> None:
        """Pass the event on to each observer."""
        for observer in self.observers:
            observer.round_finished(round_number, row)


class ProgressLines(RunObserver):
    """One line per round (or global version) for the user, through ``print``.

    Args:
        print_line: Where lines go.
        rounds: Rounds of the run (for ``round 3/10``).
    """

    def __init__(self, print_line: Callable[[str], None], rounds: int) -> None:
        self.print_line = print_line
        self.rounds = rounds

    def round_finished(self, round_number: int, row: Mapping[str, Any]) -> None:
        """Print the row's line: accuracy, loss and timings (late and failed sites if any)."""
        if "updates_total" in row:  # an asynchronous run's global version
            self.print_line(
                f"version {row['round']:>4}  accuracy {row['accuracy']:.4f}"
                f"  loss {row['loss']:.4f}  at {row['seconds']:.2f}s"
                f"  (updates {row['updates_total']}, sites {row['site_ids']},"
                f" staleness {row['staleness']})"
            )
            return
        self.print_line(
            f"round {round_number:>3}/{self.rounds}  accuracy {row['accuracy']:.4f}"
            f"  loss {row['loss']:.4f}  round {row['round_seconds']:.2f}s"
            f"  (train max {row['train_seconds_max']:.2f}s,"
            f" aggregate {row['aggregate_seconds']:.2f}s,"
            f" evaluate {row['evaluate_seconds']:.2f}s"
            + (f", late: {row['late_site_ids']}" if row["late_site_ids"] else "")
            + (f", failed: {row['failed_site_ids']}" if row["failed_site_ids"] else "")
            + ")"
        )
