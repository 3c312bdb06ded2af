"""The controller: FedAvg rounds as Parsl apps, with only small references passing through here.

Per round::

    train(site i, global model ref)  on site i's executor   -> {"weights": <update ref>, ...}
    aggregate(*train futures)         on the aggregator      -> {"weights": <new global ref>, ...}
    evaluate(new global ref)          on the aggregator      -> {"accuracy", "loss", ...}

The controller never resolves a weights proxy; it only forwards them and, once a round is
finished, evicts the round's objects by key.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import parsl
from proxystore.store.base import Store

from proxyflox.apps import bind_apps
from proxyflox.config import ConfigError, ExperimentConfig, SiteOptions, merge_site_options
from proxyflox.results import (
    PARTITION_FILE,
    SITE_COLUMNS,
    CsvLog,
    round_columns,
    write_partition,
)
from proxyflox.sites import Deployment, assign_sites, site_executor_labels
from proxyflox.stores import BACKENDS, evict_weights, open_store


@dataclass
class RunResult:
    """What a finished run reports back (everything is also in the run directory)."""

    run_dir: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return float(self.rounds[-1]["accuracy"])


def run_federation(
    config: ExperimentConfig,
    deployment: Deployment,
    run_dir: Path,
    *,
    progress: Callable[[str], None] = print,
) -> RunResult:
    """Run ``config.rounds`` rounds of FedAvg on the executors of a deployment.

    Parsl is shut down on every exit path (errors and Ctrl-C included), and every object the run
    put into the store is evicted.
    """
    parsl_config = deployment.parsl_config
    options = deployment.options_for(config)
    if config.transfer == "proxy":
        backend_options = BACKENDS[config.store.backend].site_options(config.store)
        options = {
            label: merge_site_options(backend_options.get(label, SiteOptions()), site)
            for label, site in options.items()
        }
    site_labels = site_executor_labels(parsl_config, config.aggregator)
    num_sites = config.sites or len(site_labels)
    if config.dataset == "folder" and num_sites > len(site_labels):
        # A site is a machine with its own data: two sites on one executor would read the
        # same files and train on the same samples twice.
        raise ConfigError(
            f"sites: dataset folder needs one site executor per site, got sites={num_sites} "
            f"and {len(site_labels)} site executor(s)"
        )
    placement = assign_sites(num_sites, site_labels)
    parsl_config.run_dir = str(run_dir / "parsl")
    apps = bind_apps(sorted(set(placement)), config.aggregator)

    store: Store[Any] | None = None
    if config.transfer == "proxy":
        store = open_store(config.store, run_dir, name=f"proxyflox-{uuid.uuid4().hex[:12]}")
    store_config = store.config() if store is not None else None

    result = RunResult(run_dir)
    rounds_log = CsvLog(run_dir / "rounds.csv", round_columns(num_sites, config.evaluate_sites))
    sites_log = CsvLog(run_dir / "sites.csv", SITE_COLUMNS)
    in_flight: list[Future[Any]] = []  # futures whose results may hold refs to evict
    try:
        with parsl.load(parsl_config):
            on_aggregator = options[config.aggregator]
            init = apps.init(config, store_config, on_aggregator)
            in_flight.append(init)
            global_model = init.result()
            for round_number in range(1, config.rounds + 1):
                start = time.perf_counter()
                trains = [
                    apps.train[placement[site]](
                        config,
                        site,
                        num_sites,
                        round_number,
                        global_model,
                        store_config,
                        options[placement[site]],
                    )
                    for site in range(num_sites)
                ]
                last = round_number == config.rounds
                aggregate = apps.aggregate(
                    *trains,
                    store_config=store_config,
                    save_path=str(run_dir / "model.pt") if last else None,
                    options=on_aggregator,
                )
                evaluation = apps.evaluate(config, aggregate, on_aggregator)
                local_evaluations = [
                    apps.evaluate_site[placement[site]](
                        config, site, num_sites, aggregate, options[placement[site]]
                    )
                    for site in (range(num_sites) if config.evaluate_sites else ())
                ]
                in_flight.extend([*trains, aggregate])
                # Sites first, so a failing site surfaces as itself, not as a dependency error.
                updates = [train.result() for train in trains]
                new_global = aggregate.result()
                metrics = evaluation.result()
                local_metrics = [local.result() for local in local_evaluations]
                round_seconds = time.perf_counter() - start

                # The old global model and the updates are no longer needed by anyone.
                if store is not None:
                    for done in (global_model, *updates):
                        evict_weights(store, done["weights"])
                in_flight = [aggregate]
                global_model = new_global

                row = _round_row(round_number, updates, new_global, metrics, round_seconds)
                for local in local_metrics:
                    row[f"site{local['site']}_accuracy"] = local["accuracy"]
                    row[f"site{local['site']}_loss"] = local["loss"]
                rounds_log.write(row)
                if round_number == 1:
                    _write_partition_summary(run_dir, placement, updates, local_metrics)
                for update in updates:
                    sites_log.write(
                        {"round": round_number, "executor": placement[update["site"]]}
                        | {key: update[key] for key in SITE_COLUMNS if key in update}
                    )
                result.rounds.append(row)
                progress(
                    f"round {round_number:>3}/{config.rounds}  accuracy {metrics['accuracy']:.4f}"
                    f"  loss {metrics['loss']:.4f}  round {round_seconds:.2f}s"
                    f"  (train max {row['train_seconds_max']:.2f}s,"
                    f" aggregate {row['aggregate_seconds']:.2f}s,"
                    f" evaluate {row['evaluate_seconds']:.2f}s)"
                )
    finally:
        rounds_log.close()
        sites_log.close()
        if store is not None:
            _evict_outstanding(store, in_flight)
            store.close()
            _clean_store_dir(config, run_dir, progress)
    _write_plots(run_dir, progress)
    return result


def _write_partition_summary(
    run_dir: Path,
    placement: list[str],
    updates: list[dict[str, Any]],
    local_metrics: list[dict[str, Any]],
) -> None:
    """``partition.csv`` from the class counts the sites reported: the controller never loads
    data to know how it is split."""
    rows = [
        {
            "site": result["site"],
            "executor": placement[result["site"]],
            "split": split,
            "class_counts": result["class_counts"],
        }
        for split, results in (("train", updates), ("test", local_metrics))
        for result in results
    ]
    write_partition(run_dir / PARTITION_FILE, rows)


def _write_plots(run_dir: Path, progress: Callable[[str], None]) -> None:
    """The run's PNG plots; a plotting failure only warns, the CSV files are the results."""
    from proxyflox.plot import plot_run  # matplotlib loads only when a run has finished

    try:
        plot_run(run_dir)
    except Exception as err:
        progress(f"warning: plots not written: {type(err).__name__}: {err}")


def _round_row(
    round_number: int,
    updates: list[dict[str, Any]],
    new_global: dict[str, Any],
    metrics: dict[str, Any],
    round_seconds: float,
) -> dict[str, Any]:
    samples = sum(u["num_samples"] for u in updates)
    row: dict[str, Any] = {
        "round": round_number,
        "sites": len(updates),
        "site_ids": " ".join(str(u["site"]) for u in updates),
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "round_seconds": round_seconds,
        "train_seconds_max": max(u["train_seconds"] for u in updates),
        "resolve_seconds_max": max(u["resolve_seconds"] for u in updates),
        "put_seconds_max": max(u["put_seconds"] for u in updates),
        "aggregate_seconds": new_global["aggregate_seconds"],
        "aggregate_resolve_seconds": new_global["resolve_seconds"],
        "aggregate_put_seconds": new_global["put_seconds"],
        "evaluate_seconds": metrics["evaluate_seconds"],
        "model_bytes": new_global["model_bytes"],
        "train_loss": sum(u["train_loss"] * u["num_samples"] for u in updates) / samples,
    }
    for update in updates:
        row[f"site{update['site']}_train_seconds"] = update["train_seconds"]
        row[f"site{update['site']}_resolve_seconds"] = update["resolve_seconds"]
    return row


def _evict_outstanding(store: Store[Any], futures: Iterable[Future[Any]]) -> None:
    """Evict what finished apps put, after an error or at the end (the final global model)."""
    for future in futures:
        if future.done() and future.exception() is None:
            value = future.result()
            if isinstance(value, dict) and "weights" in value:
                evict_weights(store, value["weights"])


def _clean_store_dir(
    config: ExperimentConfig, run_dir: Path, progress: Callable[[str], None]
) -> None:
    """Remove the run's own store directory (it may hold objects of apps an interrupt cut off);
    leave a user-given shared directory alone, saying what is still in it."""
    if config.store.backend != "file":
        return
    if config.store.directory is None:
        shutil.rmtree(run_dir / "store", ignore_errors=True)
        return
    directory = Path(config.store.directory)
    leftovers = list(directory.iterdir()) if directory.is_dir() else []
    if leftovers:
        progress(f"warning: {len(leftovers)} object(s) of this run are left in {directory}")
