"""The asynchronous controller (FedAsync, FedBuff): no rounds, driven by Parsl futures.

Every site gets new work as soon as it returns an update, trained from the newest global model.
Updates are aggregated as they arrive, every ``strategy.updates_per_aggregation`` of them. Each
carries its staleness (how many global versions were published since its site received the
model it trained), and the strategy's own rule decides what it does with it: FedAsync mixes a
model in by ``alpha * S(staleness)``; FedBuff scales each change by ``1/sqrt(1 + staleness)``
with ``staleness_scaling: sqrt`` and ignores staleness with ``none``. The run ends when
``max_updates`` updates arrived or ``max_seconds`` passed; updates still in flight then are
dropped and evicted.

Outputs: ``updates.csv`` (every update: site, staleness, when, and why the aggregator left it
out if it did; written once its aggregation is done), ``rounds.csv`` (one row per
aggregation, i.e. per global version), ``model.pt`` (the newest global model, rewritten by
the aggregator at every aggregation).
"""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from proxyflox.controller.context import RunContext
from proxyflox.controller.records import traffic
from proxyflox.errors import RunStoppedError, TooFewUpdatesError
from proxyflox.messages import AggregateResult, Evaluation, GlobalModel, Instructions, TrainResult
from proxyflox.strategies import Strategy


@dataclass(frozen=True)
class _Work:
    """A train app in flight: its site, and the global version it trains from."""

    site: int
    version: int
    model: GlobalModel


def run_asynchronous(run: RunContext, strategy: Strategy) -> Iterator[dict[str, Any]]:
    """Run an asynchronous strategy until its budget is spent; yield each version's row."""
    return _AsyncRun(run, strategy).run()


class _AsyncRun:
    """State of one asynchronous run: the newest global version, work in flight, the buffer."""

    def __init__(self, run: RunContext, strategy: Strategy) -> None:
        self.run_ = run
        self.config = run.config
        self.strategy = strategy
        self.instructions = Instructions(
            **strategy.train_instructions(),
            update_kind=strategy.update_kind,
            run_key=run.run_dir.name,
        )
        self.version = 0
        self.newest: GlobalModel | None = None
        self.in_flight: dict[Future[TrainResult], _Work] = {}
        #: (update, staleness, the model a stale change is from (held until aggregated), its
        #: ``updates.csv`` row, written once the aggregator has said whether it used it)
        self.buffer: list[tuple[TrainResult, int, GlobalModel | None, dict[str, Any]]] = []
        self.evaluations: list[tuple[dict[str, Any], GlobalModel, Future[Evaluation]]] = []
        self.received = 0
        self.tasks_per_site: Counter[int] = Counter()
        self.start = 0.0

    def run(self) -> Iterator[dict[str, Any]]:
        run, ledger = self.run_, self.run_.ledger
        self.newest = ledger.claim(ledger.expect(run.runtime.init()))
        self.start = run.seconds()  # like rounds.csv of synchronous runs: from here
        run.observer.run_started(self.start)
        for site in run.plan.sample(self.strategy, 0):
            self._give_work(site)
        while self.in_flight and not self._budget_spent():
            timeout = None
            if self.config.max_seconds is not None:
                timeout = max(0.0, self.config.max_seconds - run.seconds())
            done, _ = concurrent.futures.wait(
                self.in_flight, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                if self._budget_spent():
                    break  # several arrived together: the rest are over budget, dropped below
                self._receive(future)
            yield from self._finished_evaluations(block=False)
        for future in self.in_flight:
            ledger.drop(future)  # over budget: dropped, evicted when they arrive
        self.in_flight.clear()
        for update, _, base, row in self.buffer:  # a partly filled buffer too
            run.records.write_update(row, update)
            ledger.release(update, *([base] if base is not None else []))
        self.buffer = []
        yield from self._finished_evaluations(block=True)
        if any(setup.state_dir is not None for setup in run.plan.setups.values()):
            concurrent.futures.wait(run.runtime.forget_site_state(self.instructions.run_key))
        if self.received < self.config.min_clients:
            raise RunStoppedError(
                f"only {self.received} updates arrived, fewer than "
                f"min_clients={self.config.min_clients}"
            )

    def _budget_spent(self) -> bool:
        config = self.config
        if config.max_updates is not None and self.received >= config.max_updates:
            return True
        return config.max_seconds is not None and self.run_.seconds() >= config.max_seconds

    def _give_work(self, site: int) -> None:
        assert self.newest is not None
        self.tasks_per_site[site] += 1
        feeds_back = self.run_.plan.setup_of(site).state_dir is not None
        accepted = self.tasks_per_site[site] - 1 or None  # every update that arrives is used
        future = self.run_.runtime.train(
            site,
            self.tasks_per_site[site],
            self.newest,
            self.instructions,
            accepted if feeds_back else None,
        )
        self.in_flight[self.run_.ledger.expect(future, uses=[self.newest])] = _Work(
            site, self.version, self.newest
        )

    def _receive(self, future: Future[TrainResult]) -> None:
        run = self.run_
        work = self.in_flight.pop(future)
        staleness = self.version - work.version
        # A stale change is rebuilt into the site's model from the version it started from:
        # held before the claim, which lets go of what the app used.
        base = work.model if staleness > 0 and self.strategy.update_kind == "weights" else None
        if base is not None:
            run.ledger.hold(base)
        try:
            update = run.ledger.claim(future)  # a failing site raises here
        except BaseException:
            if base is not None:
                run.ledger.release(base)
            raise
        if base is not None and not update.change:
            run.ledger.release(base)
            base = None
        self.received += 1
        row = {
            "update": self.received,
            "site": work.site,
            "version_started": work.version,
            "staleness": staleness,
            "seconds": run.seconds() - self.start,
        }
        run.observer.trained(self.version + 1, update)
        self.buffer.append((update, staleness, base, row))
        if len(self.buffer) >= self.strategy.updates_per_aggregation:
            self._aggregate()
        if not self._budget_spent():
            self._give_work(work.site)

    def _aggregate(self) -> None:
        run, ledger = self.run_, self.run_.ledger
        assert self.newest is not None
        updates = [update for update, _, _, _ in self.buffer]
        staleness = [s for _, s, _, _ in self.buffer]
        bases = [base for _, _, base, _ in self.buffer]
        rows = [row for _, _, _, row in self.buffer]
        self.buffer = []
        try:
            aggregate: AggregateResult | None = ledger.claim(
                ledger.expect(
                    run.runtime.aggregate(
                        self.strategy,
                        self.newest,
                        updates,
                        staleness=staleness,
                        bases=bases,
                        save_path=run.run_dir / "model.pt",
                    )
                )
            )
            rejected = aggregate.rejected if aggregate is not None else ()
        except TooFewUpdatesError as err:  # every update left out: no new version
            aggregate, rejected = None, err.rejected
        why = {position: reason for position, _, reason in rejected}
        for position, (row, update) in enumerate(zip(rows, updates, strict=True)):
            run.records.write_update(row | {"rejected": why.get(position, "")}, update)
        # The buffered updates (and, once replaced, the previous version): the controller is
        # done with them (apps still training from that version keep it until they return).
        done = [base for base in bases if base is not None]
        ledger.release(*updates, *done, *([self.newest] if aggregate is not None else []))
        if aggregate is None:
            return
        used = [u for position, u in enumerate(updates) if position not in why]
        staleness = [s for position, s in enumerate(staleness) if position not in why]
        self.version += 1
        self.newest = aggregate.model
        run.observer.aggregated(self.version, aggregate)
        row = {
            "round": self.version,
            "sites": len(used),
            "site_ids": " ".join(str(u.site) for u in used),
            "staleness": " ".join(map(str, staleness)),
            "updates_total": self.received,
            "seconds": run.seconds() - self.start,
            "aggregate_seconds": aggregate.aggregate_seconds,
            "aggregate_resolve_seconds": aggregate.resolve_seconds,
            "model_bytes": aggregate.model_bytes,
        } | traffic(used, aggregate)
        evaluation = ledger.expect(run.runtime.evaluate(self.newest), uses=[self.newest])
        self.evaluations.append((row, self.newest, evaluation))

    def _finished_evaluations(self, block: bool) -> Iterator[dict[str, Any]]:
        run = self.run_
        while self.evaluations and (block or self.evaluations[0][2].done()):
            row, _model, future = self.evaluations.pop(0)
            metrics = run.ledger.claim(future)
            run.observer.evaluated(row["round"], metrics)
            row |= {
                "accuracy": metrics.accuracy,
                "loss": metrics.loss,
                "evaluate_seconds": metrics.evaluate_seconds,
            }
            run.records.write_round(row)
            run.observer.round_finished(row["round"], row)
            yield row
