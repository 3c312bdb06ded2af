"""The asynchronous controller (FedAsync, FedBuff): no rounds, driven by Parsl futures.

Every site gets new work as soon as it returns an update, trained from the newest global model.
Updates are aggregated as they arrive, one at a time (FedAsync) or every ``buffer_size``
(FedBuff), each weighed by its staleness: how many global versions were published since its
site received the model it trained. The run ends when ``max_updates`` updates arrived or
``max_seconds`` passed; updates still in flight then are dropped and their objects evicted.

Outputs: ``updates.csv`` (every update: site, staleness, when), ``rounds.csv`` (one row per
aggregation, i.e. per global version), ``model.pt`` (the newest global model, rewritten by
the aggregator at every aggregation).
"""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from proxyflox.federation import Federation, RunResult, RunStoppedError
from proxyflox.results import ASYNC_ROUND_COLUMNS, UPDATE_COLUMNS, CsvLog
from proxyflox.settings import ExperimentConfig
from proxyflox.sites import Deployment
from proxyflox.strategies import FedBuff, Strategy


def run_asynchronous(
    config: ExperimentConfig,
    strategy: Strategy,
    deployment: Deployment,
    run_dir: Path,
    progress: Callable[[str], None],
) -> RunResult:
    """Run an asynchronous strategy until its budget is spent."""
    result = RunResult(run_dir)
    with Federation(
        config, deployment, run_dir, progress, lambda _: list(ASYNC_ROUND_COLUMNS)
    ) as federation:
        updates_log = CsvLog(run_dir / "updates.csv", UPDATE_COLUMNS)
        try:
            AsyncController(federation, strategy, updates_log, result.rounds).run()
        finally:
            updates_log.close()
    return result


class AsyncController:
    """State of one asynchronous run: global versions, work in flight, buffered updates."""

    def __init__(
        self,
        federation: Federation,
        strategy: Strategy,
        updates_log: CsvLog,
        rows: list[dict[str, Any]],
    ) -> None:
        self.federation = federation
        self.config = federation.config
        self.strategy = strategy
        self.updates_log = updates_log
        self.rows = rows
        self.instructions = strategy.train_instructions() | {"update_kind": strategy.update_kind}
        self.buffer_size = strategy.buffer_size if isinstance(strategy, FedBuff) else 1
        self.version = 0
        self.globals: dict[int, Mapping[str, Any]] = {}
        self.users: Counter[int] = Counter()  # tasks in flight per global version
        self.in_flight: dict[Future[Any], tuple[int, int, int]] = {}  # site, version, task
        self.buffer: list[tuple[dict[str, Any], int]] = []  # (update, staleness)
        self.evaluations: list[tuple[dict[str, Any], Future[Any]]] = []
        self.received = 0
        self.tasks_per_site: Counter[int] = Counter()
        self.state: Mapping[str, Any] | None = None
        self.start = 0.0

    def run(self) -> None:
        initial = self.federation.init_model()
        self.start = self.federation.seconds()  # like rounds.csv of synchronous runs: from here
        self.federation.hold(initial)
        self.globals[0] = initial
        for site in self.federation.sample(self.strategy, 0):
            self._give_work(site)
        while self.in_flight and not self._budget_spent():
            timeout = None
            if self.config.max_seconds is not None:
                timeout = max(0.0, self.config.max_seconds - self.federation.seconds())
            done, _ = concurrent.futures.wait(
                self.in_flight, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                self._receive(future)
            self._write_finished_evaluations(block=False)
            self._forget_unused_versions()
        for future, (_site, version, _task) in self.in_flight.items():
            # Over budget: these updates are dropped (their global version is kept till then).
            self.federation.discard_when_done(future, started_from=self.globals[version])
        self.in_flight.clear()
        # A partly filled buffer at the end is dropped too.
        self.federation.release(*(update for update, _ in self.buffer))
        self.buffer = []
        self._write_finished_evaluations(block=True)
        if self.received < self.config.min_clients:
            raise RunStoppedError(
                f"only {self.received} updates arrived, fewer than "
                f"min_clients={self.config.min_clients}"
            )

    def _budget_spent(self) -> bool:
        config = self.config
        if config.max_updates is not None and self.received >= config.max_updates:
            return True
        return config.max_seconds is not None and self.federation.seconds() >= config.max_seconds

    def _give_work(self, site: int) -> None:
        self.tasks_per_site[site] += 1
        task = self.tasks_per_site[site]
        future = self.federation.train(site, task, self.globals[self.version], self.instructions)
        self.in_flight[future] = (site, self.version, task)
        self.users[self.version] += 1

    def _receive(self, future: Future[Any]) -> None:
        site, started_version, _task = self.in_flight.pop(future)
        self.users[started_version] -= 1
        update = self.federation.settle(future)  # a failing site raises here
        self.received += 1
        staleness = self.version - started_version
        self.updates_log.write(
            {
                "update": self.received,
                "site": site,
                "executor": self.federation.placement[site],
                "version_started": started_version,
                "staleness": staleness,
                "seconds": self.federation.seconds() - self.start,
            }
            | {key: update[key] for key in UPDATE_COLUMNS if key in update}
        )
        self.buffer.append((update, staleness))
        if len(self.buffer) >= self.buffer_size:
            self._aggregate()
        self._forget_unused_versions()
        if not self._budget_spent():
            self._give_work(site)

    def _aggregate(self) -> None:
        updates = [update for update, _ in self.buffer]
        staleness = [s for _, s in self.buffer]
        current = self.globals[self.version]
        new_global = self.federation.settle(
            self.federation.aggregate(
                self.strategy, current, updates, staleness=staleness, state=self.state, save=True
            )
        )
        self.federation.release(*updates)
        self.federation.hold(new_global)
        self.buffer = []
        self.version += 1
        self.globals[self.version] = new_global
        self.state = new_global.get("state")
        row = {
            "round": self.version,
            "sites": len(updates),
            "site_ids": " ".join(str(u["site"]) for u in updates),
            "staleness": " ".join(map(str, staleness)),
            "updates_total": self.received,
            "seconds": self.federation.seconds() - self.start,
            "aggregate_seconds": new_global["aggregate_seconds"],
            "aggregate_resolve_seconds": new_global["resolve_seconds"],
            "model_bytes": new_global["model_bytes"],
        }
        self.users[self.version] += 1  # the evaluation reads this version
        self.evaluations.append((row, self.federation.evaluate(new_global)))

    def _forget_unused_versions(self) -> None:
        """Evict global versions no task is training from (the newest always stays)."""
        for version in [v for v in self.globals if v != self.version and self.users[v] <= 0]:
            # The newest global's state replaced this one's: evict both, the model and state.
            self.federation.release(self.globals.pop(version))

    def _write_finished_evaluations(self, block: bool) -> None:
        while self.evaluations and (block or self.evaluations[0][1].done()):
            row, evaluation = self.evaluations.pop(0)
            metrics = evaluation.result()
            self.users[row["round"]] -= 1
            row |= {
                "accuracy": metrics["accuracy"],
                "loss": metrics["loss"],
                "evaluate_seconds": metrics["evaluate_seconds"],
            }
            self.federation.rounds_log.write(row)
            self.rows.append(row)
            self.federation.progress(
                f"version {row['round']:>4}  accuracy {row['accuracy']:.4f}"
                f"  loss {row['loss']:.4f}  at {row['seconds']:.2f}s"
                f"  (updates {row['updates_total']}, sites {row['site_ids']},"
                f" staleness {row['staleness']})"
            )
