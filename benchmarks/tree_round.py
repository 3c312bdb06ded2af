"""A transfer benchmark's round in an aggregator tree: the controller's own tree round
(:func:`proxyflox.controller.tree.tree_round`: each group's aggregator relays the global model
where its sites read it, the sites send their updates to it, it puts one partial) and the root's
real aggregate of the partials, with the run's reference ledger evicting every object once
nobody needs it, as in a run. Only the training is left out (the benchmark's train body).
"""

from __future__ import annotations

from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxyflox.controller.context import RunContext, run_ledger
from proxyflox.controller.observer import RunObserver
from proxyflox.controller.planner import Plan
from proxyflox.controller.records import RunRecords
from proxyflox.controller.runtime import ParslRuntime
from proxyflox.controller.store import RunStore
from proxyflox.controller.tree import GroupStores, tree_round
from proxyflox.messages import AggregateResult, GlobalModel, Instructions, TrainResult
from proxyflox.settings import ExperimentConfig
from proxyflox.strategies import Strategy


@dataclass
class TreeRounds:
    """The parts of a run that a tree round needs: the groups' stores (opened here), the
    ledger over every store, and the run context ``tree_round`` reads them from."""

    run: RunContext
    #: Records the ledger counts until the round is over (its global model, partials, copies).
    held: list[Any] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        stack: ExitStack,
        config: ExperimentConfig,
        plan: Plan,
        runtime: ParslRuntime,
        store: RunStore | None,
        run_dir: Path,
    ) -> TreeRounds:
        """Open the groups' own stores on ``stack``; Parsl is the caller's (``runtime``)."""
        assert plan.tree is not None, "a flat plan has no groups"
        run_dir.mkdir(parents=True, exist_ok=True)
        run_config = store.config if store is not None else None
        groups = GroupStores(stack, plan.tree, config, run_config, run_dir, print)
        ledger = run_ledger(store, groups)
        stack.callback(ledger.close)
        records = RunRecords(run_dir, plan.placement)  # tree_round writes no rows
        run = RunContext(
            config, plan, run_dir, runtime, ledger, records, RunObserver(), group_stores=groups
        )
        return cls(run)

    def round(
        self,
        strategy: Strategy,
        round_number: int,
        global_model: GlobalModel,
        instructions: Instructions,
    ) -> tuple[list[Future[TrainResult]], list[TrainResult], Future[AggregateResult]]:
        """Models down the tree, every site's update, partials up; the root's aggregate.

        Returns the train apps, the updates inside the partials and the root's aggregate app
        (submitted); :meth:`release` once its result is in."""
        ledger, runtime = self.run.ledger, self.run.runtime
        ledger.hold(global_model)  # the relays' copies are made from it
        trains: list[Future[TrainResult]] = []

        def train(site: int, model: GlobalModel) -> Future[TrainResult]:
            future = runtime.train(site, round_number, model, instructions)
            trains.append(future)
            return ledger.expect(future, uses=[model])

        sites = list(range(self.run.plan.num_sites))
        below = tree_round(self.run, round_number, sites, global_model, train, lambda: None, None)
        if below.failed or below.late:
            raise RuntimeError(f"round {round_number}: sites lost in the tree: {below.failed}")
        self.held = [global_model, *below.inputs, *below.held]
        return trains, below.updates, runtime.aggregate(strategy, global_model, below.inputs)

    def release(self) -> None:
        """The round's aggregate is in: its global model, partials and copies may go."""
        self.run.ledger.release(*self.held)
        self.held = []
