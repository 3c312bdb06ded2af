"""The parts of one run that its round loop works with, opened and closed together."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxyflox.controller.ledger import ReferenceLedger
from proxyflox.controller.observer import RunObserver
from proxyflox.controller.planner import Plan
from proxyflox.controller.records import RunRecords
from proxyflox.controller.runtime import AppBodies, ParslRuntime
from proxyflox.controller.store import RunStore, no_store_evict
from proxyflox.controller.tree import GroupStores
from proxyflox.errors import RunStoppedError
from proxyflox.settings import ExperimentConfig
from proxyflox.sites import Deployment
from proxyflox.stores import keeps_host_copies, key_of
from proxyflox.stores.host_copies import copies_name


@dataclass
class RunResult:
    """What a finished run reports back (everything is also in the run directory)."""

    run_dir: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        """Accuracy of the last global model."""
        return float(self.rounds[-1]["accuracy"])


@dataclass
class RunContext:
    """Settings, plan, Parsl, reference ledger, records and observer of one run."""

    config: ExperimentConfig
    plan: Plan
    run_dir: Path
    runtime: ParslRuntime
    ledger: ReferenceLedger
    records: RunRecords
    observer: RunObserver
    started: float = field(default_factory=time.perf_counter)
    #: The stores of an aggregator tree's groups (``None``: a flat run).
    group_stores: GroupStores | None = None

    def seconds(self) -> float:
        """Seconds since the run started (controller clock)."""
        return time.perf_counter() - self.started


def open_run(
    stack: ExitStack,
    config: ExperimentConfig,
    deployment: Deployment,
    plan: Plan,
    run_dir: Path,
    observer: RunObserver,
    warn: Any,
    *,
    asynchronous: bool,
    report_columns: Sequence[str] = (),
    bodies: AppBodies | None = None,
) -> RunContext:
    """Open the store, the ledger, the records and Parsl on ``stack``.

    The stack closes them in reverse: Parsl shuts down first (after letting late apps finish on
    a normal end), then the records close, the ledger evicts what is left, the store closes.
    """
    started = time.perf_counter()
    store = RunStore(config.store, run_dir, warn) if config.transfer == "proxy" else None
    if store is not None:
        stack.callback(store.close)
    groups = (
        GroupStores(stack, plan.tree, config, store.config if store else None, run_dir, warn)
        if plan.tree is not None
        else None
    )
    ledger = run_ledger(store, groups)
    stack.push(_close_ledger(ledger, warn))
    records = stack.enter_context(
        RunRecords(
            run_dir,
            plan.placement,
            asynchronous=asynchronous,
            evaluate_sites=config.evaluate_sites,
            report_columns=report_columns,
        )
    )
    runtime = stack.enter_context(
        ParslRuntime(
            deployment.parsl_config,
            plan,
            run_dir,
            store.config if store is not None else None,
            config.retries,
            bodies,
            broadcast=config.compression.broadcast,
            monitoring=config.monitoring,
            host_copies=[
                copies_name(own.run_dir)
                for own in [store, *(groups.own.values() if groups else [])]
                if own is not None and keeps_host_copies(own.settings)
            ],
        )
    )
    return RunContext(config, plan, run_dir, runtime, ledger, records, observer, started, groups)


def run_ledger(store: RunStore | None, groups: GroupStores | None) -> ReferenceLedger:
    """The ledger of a run's objects, in its store and (a tree) its groups' own stores."""
    if groups is not None and groups.own and store is not None:  # keys of several stores
        return ReferenceLedger(groups.evict_from(store), groups.key_of)
    return ReferenceLedger(
        store.evict if store is not None else no_store_evict,
        lambda ref: key_of(ref) if store is not None else None,
    )


def _close_ledger(ledger: ReferenceLedger, warn: Any) -> Any:
    """An exit callback that evicts what is left.

    A lost store only warns when the run already failed (its own error says more).
    """

    def close(exc_type: type[BaseException] | None, *_: Any) -> bool:
        try:
            ledger.close()
        except RunStoppedError as err:
            if exc_type is None:
                raise
            warn(f"warning: objects of this run may be left: {err}")
        return False

    return close
