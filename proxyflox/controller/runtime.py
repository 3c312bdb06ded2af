"""Parsl for one run: load and shut down, and the apps bound to the run's executors.

The caller's Parsl ``Config`` is not changed: the run works on a shallow copy with its own
``run_dir`` and ``retries``. Apps are pinned to executors when they are bound (as Parsl wants):
one train app per site executor, init, aggregate and evaluate on the aggregator.

Right after loading, every executor that runs apps gets a priming app (its worker imports torch
and loads its data while the others do theirs). Nothing waits for it: a round's train app queues
behind its executor's priming, an executor without a sampled site holds nobody up, a failed
priming only leaves the data to the app that needs it, and one still pending at the end is
abandoned with its executor.

With monitoring on, the copy also gets Parsl's ``MonitoringHub``, its database in the run
directory (``MONITORING_DB``); a run without it loads the caller's config as it is.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import parsl
from parsl import python_app
from parsl.config import Config
from parsl.dataflow.dflow import DataFlowKernel
from parsl.monitoring import MonitoringHub
from proxystore.store.config import StoreConfig

from proxyflox import apps, partials
from proxyflox.controller.planner import Plan
from proxyflox.messages import (
    AggregateResult,
    AggregateTask,
    Evaluation,
    GlobalModel,
    InitTask,
    Instructions,
    Primed,
    TrainResult,
    UpdateRef,
)
from proxyflox.partials import Partial, RelayTask, group_strategy
from proxyflox.stores import key_of
from proxyflox.strategies import Strategy
from proxyflox.tree import TreeNode

#: How long the end of a run waits for apps still running (late sites) so that what they put
#: can be evicted; what they put after that is left to the store directory's removal.
LATE_APPS_GRACE_SECONDS = 120.0

#: Submitted apps kept before the first look for finished ones (see ``ParslRuntime._submit``).
PRUNE_SUBMITTED_AT = 64

#: How long the end of a run waits for the site executors to remove their hosts' copies of
#: the global models (an executor that is gone answers never).
FORGET_COPIES_SECONDS = 30.0

#: Parsl's monitoring database, inside the run directory (``monitoring: true``).
MONITORING_DB = "monitoring.db"


def monitoring_hub(run_dir: Path) -> MonitoringHub:
    """Parsl's ``MonitoringHub`` writing to ``run_dir/MONITORING_DB`` (SQLite).

    The planner has checked that its packages are installed (``check_monitoring``).
    """
    return MonitoringHub(
        logging_endpoint=f"sqlite:///{(run_dir / MONITORING_DB).resolve()}",
        workflow_name=run_dir.name,
    )


@dataclass(frozen=True)
class AppBodies:
    """The functions the apps run; measurements swap in timed bodies of the same signature."""

    init: Callable[..., Any] = apps.init_global_model
    train: Callable[..., Any] = apps.train_site
    aggregate: Callable[..., Any] = apps.aggregate_updates
    evaluate: Callable[..., Any] = apps.evaluate_global
    evaluate_site: Callable[..., Any] = apps.evaluate_site
    forget_site_state: Callable[..., Any] = apps.forget_site_state
    forget_host_copies: Callable[..., Any] = apps.forget_host_copies
    #: A tree's group aggregator putting the global model on its group's side.
    relay: Callable[..., Any] = partials.relay_global_model
    #: Warms each executor's worker at the start (``None``: no priming).
    prime: Callable[..., Any] | None = apps.prime_worker


class ParslRuntime:
    """Loads Parsl on entry, shuts it down on every way out, and submits the run's apps.

    Args:
        parsl_config: The deployment's config (left unchanged).
        plan: Placement and every executor's setup.
        run_dir: Parsl's logs go to ``run_dir/parsl``.
        store_config: The run's store (``None``: weights travel through Parsl).
        retries: Parsl's retries of a failed app.
        bodies: The app bodies.
        broadcast: How the aggregator puts each global model (``exact`` or ``fp16``).
        monitoring: Record the run in Parsl's monitoring database (see :func:`monitoring_hub`).
        host_copies: The names of the run's copies of global models that site hosts keep
            (:mod:`proxyflox.stores.host_copies`); each site executor removes its host's at
            the end of the run.
    """

    def __init__(
        self,
        parsl_config: Config,
        plan: Plan,
        run_dir: Path,
        store_config: StoreConfig | None,
        retries: int,
        bodies: AppBodies | None = None,
        broadcast: str = "exact",
        monitoring: bool = False,
        host_copies: Sequence[str] = (),
    ) -> None:
        self.plan = plan
        self.host_copies = tuple(host_copies)
        self.store_config = store_config
        self.broadcast = broadcast
        self.config = copy.copy(parsl_config)
        # Absolute: workers are told paths inside it (their certificates, their logs), and a
        # batch job starts in another directory (PBS: the user's home).
        self.config.run_dir = str((run_dir / "parsl").resolve())
        self.config.retries = retries
        if monitoring:
            self.config.monitoring = monitoring_hub(run_dir)
        bodies = bodies or AppBodies()
        on_aggregator = [plan.aggregator]
        self._init = python_app(bodies.init, executors=on_aggregator)
        self._aggregate = python_app(bodies.aggregate, executors=on_aggregator)
        self._evaluate = python_app(bodies.evaluate, executors=on_aggregator)
        self._train = {
            label: python_app(bodies.train, executors=[label]) for label in plan.site_labels
        }
        self._forget = {
            label: python_app(bodies.forget_site_state, executors=[label])
            for label in plan.site_labels
        }
        self._forget_copies = {
            label: python_app(bodies.forget_host_copies, executors=[label])
            for label in plan.site_labels
        }
        self._evaluate_site = {
            label: python_app(bodies.evaluate_site, executors=[label]) for label in plan.site_labels
        }
        groups = plan.tree.aggregators() if plan.tree is not None else []
        self._aggregate_group = {
            label: python_app(bodies.aggregate, executors=[label]) for label in groups
        }
        self._relay = {label: python_app(bodies.relay, executors=[label]) for label in groups}
        self._prime = (
            {
                label: python_app(bodies.prime, executors=[label])
                for label in [*plan.site_labels, plan.aggregator, *groups]
            }
            if bodies.prime is not None
            else {}
        )
        #: Each executor's priming, by label (none before entering, or without a priming body).
        self.primings: dict[str, Future[Primed]] = {}
        self._submitted: list[Future[Any]] = []
        self._prune_at = PRUNE_SUBMITTED_AT
        self._dfk: DataFlowKernel | None = None

    def __enter__(self) -> ParslRuntime:
        try:
            self._dfk = parsl.load(self.config)
        except BaseException:
            # Cut off while loading (Ctrl-C, a failing executor): no DFK to clean up, so stop
            # the interchanges that did start, before anyone removes the run directory.
            for executor in self.config.executors:
                if getattr(executor, "interchange_proc", None) is not None:
                    with contextlib.suppress(Exception):
                        executor.shutdown()
            raise
        self._start_priming()
        return self

    def _start_priming(self) -> None:
        """Submit each executor's priming app, waiting for none (see the module docstring)."""
        for label, prime in self._prime.items():
            hosted = [site for site, where in enumerate(self.plan.placement) if where == label]
            # More sites than a worker keeps would only evict one another.
            sites = tuple(hosted[: apps.SITE_DATA_CACHE])
            with contextlib.suppress(Exception):
                self.primings[label] = prime(self.plan.setups[label], sites)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._dfk is None:
            return
        if exc_type is None:
            # A normal end lets apps still running (late sites) finish, so that what they put
            # is evicted rather than left behind.
            self.wait_for_late_apps()
        if self.host_copies and (exc_type is None or issubclass(exc_type, Exception)):
            self._forget_host_copies()
        self._dfk.cleanup()
        self._dfk = None

    def _forget_host_copies(self) -> None:
        """Every site executor removes its host's copies; a failing one is left as it is."""
        removals = []
        for label in self.plan.site_labels:
            with contextlib.suppress(Exception):
                removals.append(
                    self._forget_copies[label](self.plan.setups[label], self.host_copies)
                )
        concurrent.futures.wait(removals, timeout=FORGET_COPIES_SECONDS)

    def _submit(self, future: Future[Any]) -> Future[Any]:
        # Pruning on every submit costs O(apps in flight) each: quadratic in the clients of a
        # round. Pruning when the list has doubled keeps it linear and at most twice the apps
        # in flight.
        if len(self._submitted) >= self._prune_at:
            self._submitted = [f for f in self._submitted if not f.done()]
            self._prune_at = max(PRUNE_SUBMITTED_AT, 2 * len(self._submitted))
        self._submitted.append(future)
        return future

    # -- the apps --------------------------------------------------------------------------------

    def init(self, resume_from: Path | None = None) -> Future[GlobalModel]:
        """The initial global model, built (or read from a checkpoint) and put on the aggregator."""
        task = InitTask(
            self.plan.setups[self.plan.aggregator],
            self.store_config,
            str(resume_from) if resume_from else None,
            self.broadcast,
        )
        return self._submit(self._init(task))

    def train(
        self,
        site: int,
        round_number: int,
        global_model: GlobalModel | Future[Any],
        instructions: Instructions,
        accepted_round: int | None = None,
    ) -> Future[TrainResult]:
        """One site's local training from ``global_model``, on the site's executor.

        ``accepted_round``: the last round whose update from this site was aggregated (where
        its error-feedback residual continues from).
        """
        label = self.plan.placement[site]
        setup = self.plan.setups[label]
        train = self._train[label]
        if accepted_round is None:  # what a task without compression state carries
            return self._submit(train(setup, site, round_number, global_model, instructions))
        return self._submit(
            train(setup, site, round_number, global_model, instructions, accepted_round)
        )

    def aggregate(
        self,
        strategy: Strategy,
        global_model: GlobalModel,
        updates: Sequence[TrainResult | Partial],
        *,
        staleness: Sequence[int] = (),
        bases: Sequence[GlobalModel | None] = (),
        save_path: Path | None = None,
        checkpoint_dir: Path | None = None,
        min_updates: int = 1,
    ) -> Future[AggregateResult]:
        """The next global model, on the aggregator.

        The task carries each update's key and sample count, and the store config once.
        ``bases``: per update, the global model its change is from where that is not
        ``global_model`` (stale asynchronous updates). With fewer than ``min_updates`` updates
        passing the aggregator's checks the app raises ``TooFewUpdatesError``.
        """
        task = AggregateTask(
            strategy=strategy,
            global_weights=key_of(global_model.weights),
            dataset=global_model.dataset,
            state=key_of(global_model.state) if global_model.state is not None else None,
            updates=update_refs(updates, staleness, bases),
            store_config=self.store_config,
            proxystore_home=self.plan.setups[self.plan.aggregator].proxystore_home,
            store_route=self.plan.setups[self.plan.aggregator].store_route,
            save_path=str(save_path) if save_path else None,
            checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
            broadcast=self.broadcast,
            layout=global_model.layout,
            min_updates=min_updates,
        )
        return self._submit(self._aggregate(task))

    def relay(
        self, group: TreeNode, model: GlobalModel, store_config: StoreConfig | None
    ) -> Future[GlobalModel]:
        """A group's copy of ``model``, put into ``store_config`` by the group's aggregator."""
        setup = self.plan.setups[group.aggregator]
        task = RelayTask(store_config, setup.proxystore_home, self.broadcast)
        return self._submit(self._relay[group.aggregator](task, model))

    def aggregate_group(
        self,
        group: TreeNode,
        model: GlobalModel,
        children: Sequence[TrainResult | Partial],
        store_config: StoreConfig | None,
        result_store_config: StoreConfig | None,
    ) -> Future[AggregateResult]:
        """A group's partial, on its aggregator, from its children's updates and partials.

        They are read from ``store_config`` (where the group's sites put theirs), ``model`` is
        the group's copy of the global model there; the partial goes to ``result_store_config``.
        """
        task = AggregateTask(
            strategy=group_strategy(children),
            global_weights=key_of(model.weights),
            dataset=model.dataset,
            state=None,
            updates=update_refs(children),
            store_config=store_config,
            proxystore_home=self.plan.setups[group.aggregator].proxystore_home,
            result_store_config=result_store_config
            if result_store_config != store_config
            else None,
            layout=model.layout,
        )
        return self._submit(self._aggregate_group[group.aggregator](task))

    def evaluate(self, global_model: GlobalModel) -> Future[Evaluation]:
        """The global model on the global test set, on the aggregator."""
        return self._submit(self._evaluate(self.plan.setups[self.plan.aggregator], global_model))

    def evaluate_sites(self, global_model: GlobalModel) -> list[Future[Evaluation]]:
        """Every site's local evaluation of the global model (``evaluate_sites: true``)."""
        return [
            self._submit(self._evaluate_site[label](self.plan.setups[label], site, global_model))
            for site, label in enumerate(self.plan.placement)
        ]

    def wait_for_late_apps(self) -> None:
        """Let the apps still running (late or dropped sites) finish, within a grace period."""
        running = [future for future in self._submitted if not future.done()]
        if running:
            concurrent.futures.wait(running, timeout=LATE_APPS_GRACE_SECONDS)

    def forget_site_state(self, run_key: str) -> list[Future[int]]:
        """Every site executor removes the state its sites kept for the run (residuals).

        Late sites' train apps finish first: one still running would write its residual back
        after the removal, or fail writing it while the directory goes (after its put).
        """
        self.wait_for_late_apps()
        return [
            self._submit(self._forget[label](self.plan.setups[label], run_key))
            for label in self.plan.site_labels
            if self.plan.setups[label].state_dir is not None
        ]


def update_refs(
    updates: Sequence[TrainResult | Partial],
    staleness: Sequence[int] = (),
    bases: Sequence[GlobalModel | None] = (),
) -> tuple[UpdateRef, ...]:
    """What an aggregate task reads of each update: key, samples, staleness, base, clipping."""
    return tuple(
        UpdateRef(
            key_of(update.update),
            update.num_samples,
            stale,
            update.change,
            key_of(base.weights) if base is not None else None,
            # A group's partial reports neither (its sites' are in the group's result).
            unclipped=getattr(update, "unclipped", None),
            site=getattr(update, "site", None),
        )
        for update, stale, base in zip(
            updates,
            staleness or [0] * len(updates),
            bases or [None] * len(updates),
            strict=True,
        )
    )
