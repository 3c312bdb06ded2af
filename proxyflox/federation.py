"""One run's moving parts, for the controller loops in ``rounds.py`` and ``asynchronous.py``.

:class:`Federation` places sites on executors, opens the store, binds the apps, keeps the run's
CSV logs, and tracks every reference the apps hand back so that the run can evict it. Used as a
context manager it loads Parsl and, on every way out (errors and Ctrl-C included), shuts Parsl
down and evicts what the run put into the store.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import parsl
from parsl.dataflow.dflow import DataFlowKernel
from proxystore.store.base import Store

from proxyflox.apps import bind_apps
from proxyflox.errors import ConfigError, RunStoppedError
from proxyflox.preflight import check_data_settings
from proxyflox.results import PARTITION_FILE, SITE_COLUMNS, CsvLog, write_partition
from proxyflox.settings import ExperimentConfig, SiteOptions, merge_site_options
from proxyflox.sites import Deployment, assign_sites, site_executor_labels
from proxyflox.stores import BACKENDS, evict_weights, open_store
from proxyflox.strategies import Strategy
from proxyflox.training import derive_seed

_SAMPLING_STREAM = 4
#: How long the end of a run waits for apps still running (late sites) so it can evict what
#: they put; what they put after that is left to the store directory's removal.
LATE_APPS_GRACE_SECONDS = 120.0


@dataclass
class RunResult:
    """What a finished run reports back (everything is also in the run directory)."""

    run_dir: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return float(self.rounds[-1]["accuracy"])


def aggregation_input(update: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a train result the aggregate app reads: Parsl ships only this per site."""
    return {"weights": update["weights"], "num_samples": update["num_samples"]}


class Federation:
    """Executors, store, apps and logs of one run."""

    def __init__(
        self,
        config: ExperimentConfig,
        deployment: Deployment,
        run_dir: Path,
        progress: Callable[[str], None],
        round_columns: Callable[[int], list[str]],
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.progress = progress
        self.parsl_config = deployment.parsl_config
        options = deployment.options_for(config)
        if config.transfer == "proxy":
            backend_options = BACKENDS[config.store.backend].site_options(config.store)
            options = {
                label: merge_site_options(backend_options.get(label, SiteOptions()), site)
                for label, site in options.items()
            }
        self.options = options
        site_labels = site_executor_labels(self.parsl_config, config.aggregator)
        self.num_sites = config.sites or len(site_labels)
        check_data_settings(config, options, site_labels)
        if config.min_clients > self.num_sites:
            raise ConfigError(
                f"min_clients: {config.min_clients} is more than the {self.num_sites} sites"
            )
        self.placement = assign_sites(self.num_sites, site_labels)
        self.parsl_config.run_dir = str(run_dir / "parsl")
        self.parsl_config.retries = config.retries
        self.apps = bind_apps(sorted(set(self.placement)), config.aggregator)
        self.aggregator_options = self.options[config.aggregator]
        self.store: Store[Any] | None = None
        if config.transfer == "proxy":
            self.store = open_store(config.store, run_dir, f"proxyflox-{uuid.uuid4().hex[:12]}")
        self.store_config = self.store.config() if self.store is not None else None
        self.rounds_log = CsvLog(run_dir / "rounds.csv", round_columns(self.num_sites))
        self.sites_log = CsvLog(run_dir / "sites.csv", SITE_COLUMNS)
        self.started = time.perf_counter()
        self._dfk: DataFlowKernel | None = None
        # Futures whose results hold store references the run must evict when it ends.
        self._pending: set[Future[Any]] = set()
        self._held: list[Mapping[str, Any]] = []  # results still in use (global model, state)
        self._users: Counter[int] = Counter()  # late apps still running from a result (by id)
        self._deferred: dict[int, Mapping[str, Any]] = {}  # released, evicted when unused
        self._lock = threading.Lock()  # late apps' callbacks run in Parsl's threads

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Federation:
        self._dfk = parsl.load(self.parsl_config)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._wait_for_late_apps()
            if self._dfk is not None:
                self._dfk.cleanup()
        finally:
            self.rounds_log.close()
            self.sites_log.close()
            if self.store is not None:
                try:
                    self.evict(*self._held, *self._deferred.values())
                    self.evict(*self._finished_results(self._pending))
                except RunStoppedError as err:
                    if exc_type is None:
                        raise
                    self.progress(f"warning: objects of this run may be left: {err}")
                self.store.close()
                self._clean_store_dir()

    # -- submitting apps --------------------------------------------------------------------------

    def init_model(self, resume_from: Path | None = None) -> dict[str, Any]:
        """The initial global model, built (or read from a checkpoint) and put by the
        aggregator."""
        future = self._track(
            self.apps.init(
                self.config,
                self.store_config,
                self.aggregator_options,
                str(resume_from) if resume_from else None,
            )
        )
        return self.settle(future)

    def train(
        self,
        site: int,
        round_number: int,
        global_model: Mapping[str, Any] | Future[Any],
        instructions: Mapping[str, Any],
    ) -> Future[Any]:
        label = self.placement[site]
        return self._track(
            self.apps.train[label](
                self.config, site, self.num_sites, round_number, global_model,
                self.store_config, self.options[label], dict(instructions),
            )
        )  # fmt: skip

    def aggregate(
        self,
        strategy: Strategy,
        global_model: Mapping[str, Any],
        updates: Sequence[Mapping[str, Any]],
        *,
        staleness: list[int] | None = None,
        state: Mapping[str, Any] | None = None,
        save: bool = False,
        checkpoint: Path | None = None,
    ) -> Future[Any]:
        return self._track(
            self.apps.aggregate(
                strategy,
                global_model,
                *map(aggregation_input, updates),
                staleness=staleness or [],
                state=state,
                store_config=self.store_config,
                save_path=str(self.run_dir / "model.pt") if save else None,
                checkpoint_dir=str(checkpoint) if checkpoint else None,
                options=self.aggregator_options,
            )
        )

    def evaluate(self, global_model: Mapping[str, Any] | Future[Any]) -> Future[Any]:
        return self.apps.evaluate(self.config, global_model, self.aggregator_options)

    def evaluate_sites(self, global_model: Mapping[str, Any] | Future[Any]) -> list[Future[Any]]:
        """Each site's local evaluation of the global model (``evaluate_sites: true``)."""
        if not self.config.evaluate_sites:
            return []
        return [
            self.apps.evaluate_site[self.placement[site]](
                self.config, site, self.num_sites, global_model,
                self.options[self.placement[site]],
            )
            for site in range(self.num_sites)
        ]  # fmt: skip

    def sample(self, strategy: Strategy, round_number: int) -> list[int]:
        """The sites that train in a round: ``clients_per_round`` or ``fraction`` of all."""
        count = self.num_sites
        if self.config.clients_per_round is not None:
            count = min(self.config.clients_per_round, self.num_sites)
        elif self.config.fraction is not None:
            count = max(1, round(self.config.fraction * self.num_sites))
        count = max(count, min(self.config.min_clients, self.num_sites))
        rng = np.random.default_rng(derive_seed(self.config.seed, _SAMPLING_STREAM, round_number))
        return strategy.configure_train(round_number, list(range(self.num_sites)), rng, count)

    # -- store references -------------------------------------------------------------------------

    def _track(self, future: Future[Any]) -> Future[Any]:
        self._pending.add(future)
        return future

    def settle(self, future: Future[Any]) -> Any:
        """The result of a tracked future; from now on the caller owns its references."""
        result = future.result()
        self._pending.discard(future)
        return result

    def settle_failed(self, future: Future[Any]) -> None:
        """Forget a tracked future that failed (it put nothing the run knows of)."""
        self._pending.discard(future)

    def hold(self, *results: Mapping[str, Any] | None) -> None:
        """Keep these results' objects until :meth:`release` (or the end of the run)."""
        with self._lock:
            self._held.extend(r for r in results if r)

    def release(self, *results: Mapping[str, Any] | None) -> None:
        """Evict these results' objects (weights and strategy state) once nothing needs them:
        at once, or when the last late app started from them has finished."""
        for result in results:
            if not result:
                continue
            with self._lock:
                self._held = [held for held in self._held if held is not result]
                if self._users[id(result)] > 0:
                    self._deferred[id(result)] = result
                    continue
            self.evict(result)

    def evict(self, *results: Mapping[str, Any] | None) -> None:
        """Delete these results' objects from the store.

        Raises:
            RunStoppedError: if the store cannot be reached any more.
        """
        if self.store is None:
            return
        try:
            for result in results:
                if not result:
                    continue
                evict_weights(self.store, result["weights"])
                if result.get("state"):
                    evict_weights(self.store, result["state"]["weights"])
        except Exception as err:
            where = BACKENDS[self.config.store.backend].describe(self.config.store, self.run_dir)
            raise RunStoppedError(
                f"lost the store ({where}): {type(err).__name__}: {' '.join(str(err).split())}"
            ) from err

    def discard_when_done(self, future: Future[Any], started_from: Mapping[str, Any]) -> None:
        """A result nobody will use (a late site): evict its objects as soon as it arrives, and
        keep the global model it started from until then."""
        with self._lock:
            self._users[id(started_from)] += 1

        def evict_result(done: Future[Any]) -> None:
            if done.exception() is None:
                self.evict(done.result())
            with self._lock:
                self._pending.discard(done)
                self._users[id(started_from)] -= 1
                waiting = self._users[id(started_from)] == 0
                deferred = self._deferred.pop(id(started_from), None) if waiting else None
            if deferred is not None:
                self.evict(deferred)

        future.add_done_callback(evict_result)

    @staticmethod
    def _finished_results(futures: Iterable[Future[Any]]) -> list[Mapping[str, Any]]:
        return [
            future.result()
            for future in list(futures)
            if future.done() and future.exception() is None and isinstance(future.result(), dict)
        ]

    def _wait_for_late_apps(self) -> None:
        """At a normal end, let apps still running (late sites) finish, so their objects can be
        evicted rather than left behind."""
        running = [future for future in self._pending if not future.done()]
        if running:
            concurrent.futures.wait(running, timeout=LATE_APPS_GRACE_SECONDS)

    def _clean_store_dir(self) -> None:
        """Remove the run's own store directory (it may hold objects of apps an interrupt cut
        off); leave a user-given shared directory alone, saying what is still in it."""
        if self.config.store.backend != "file":
            return
        if self.config.store.directory is None:
            shutil.rmtree(self.run_dir / "store", ignore_errors=True)
            return
        directory = Path(self.config.store.directory)
        leftovers = list(directory.iterdir()) if directory.is_dir() else []
        if leftovers:
            self.progress(
                f"warning: {len(leftovers)} object(s) of this run are left in {directory}"
            )

    # -- records -------------------------------------------------------------------------------

    def log_sites(self, round_number: int, updates: Iterable[Mapping[str, Any]]) -> None:
        for update in updates:
            self.sites_log.write(
                {"round": round_number, "executor": self.placement[update["site"]]}
                | {key: update[key] for key in SITE_COLUMNS if key in update}
            )

    def write_partition_summary(
        self, updates: Sequence[Mapping[str, Any]], local_metrics: Sequence[Mapping[str, Any]]
    ) -> None:
        """``partition.csv`` from the class counts the sites reported: the controller never
        loads data to know how it is split."""
        rows = [
            {
                "site": result["site"],
                "executor": self.placement[result["site"]],
                "split": split,
                "class_counts": result["class_counts"],
            }
            for split, results in (("train", updates), ("test", local_metrics))
            for result in results
        ]
        write_partition(self.run_dir / PARTITION_FILE, rows)

    def seconds(self) -> float:
        """Seconds since the run started (controller clock)."""
        return time.perf_counter() - self.started
