"""The controller: federated rounds as Parsl apps, with only small references passing through.

Per round::

    sites = strategy.configure_train(...)          which sites train (clients_per_round, fraction)
    train(site, global model ref)   on each site's executor  -> {"weights": <update ref>, ...}
    ... wait for all, or until round_deadline (late updates are dropped and evicted)
    aggregate(global, *updates)     on the aggregator        -> {"weights": <new global ref>, ...}
    evaluate(new global ref)        on the aggregator        -> {"accuracy", "loss", ...}

The controller never resolves a weights proxy; it only forwards them and, once a round is
finished, evicts the round's objects by key. Asynchronous strategies run in
``asynchronous.py`` instead.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from proxyflox.asynchronous import run_asynchronous
from proxyflox.checkpoints import ResumePoint, checkpoint_dir, mark_complete
from proxyflox.federation import Federation, RunResult, RunStoppedError
from proxyflox.results import round_columns
from proxyflox.settings import ExperimentConfig
from proxyflox.sites import Deployment
from proxyflox.strategies import Strategy, build_strategy

__all__ = ["RunResult", "RunStoppedError", "run_federation"]


def run_federation(
    config: ExperimentConfig,
    deployment: Deployment,
    run_dir: Path,
    *,
    progress: Callable[[str], None] = print,
    resume: ResumePoint | None = None,
) -> RunResult:
    """Run the experiment on the executors of a deployment; results go to ``run_dir``.

    Parsl is shut down on every exit path (errors and Ctrl-C included), and every object the run
    put into the store is evicted.

    Args:
        config: The experiment.
        deployment: Where the apps run.
        run_dir: The run's directory (created by the caller).
        progress: Called with one line per round.
        resume: Continue a stopped run from its last checkpoint.

    Raises:
        RunStoppedError: when a round ends with fewer than ``min_clients`` updates.
    """
    strategy = build_strategy(config.strategy)
    if strategy.asynchronous:
        result = run_asynchronous(config, strategy, deployment, run_dir, progress)
    else:
        result = RunResult(run_dir)
        columns = lambda num_sites: round_columns(num_sites, config.evaluate_sites)  # noqa: E731
        with Federation(config, deployment, run_dir, progress, columns) as federation:
            for row in run_rounds(federation, strategy, resume):
                result.rounds.append(row)
    _write_plots(run_dir, progress)
    return result


def run_rounds(
    federation: Federation, strategy: Strategy, resume: ResumePoint | None = None
) -> Iterator[dict[str, Any]]:
    """Synchronous rounds; yields each round's ``rounds.csv`` row as it is written.

    Every round ends with a checkpoint (written by the aggregator, marked complete here once the
    round's rows are written).
    """
    config = federation.config
    instructions = strategy.train_instructions() | {"update_kind": strategy.update_kind}
    first_round = resume.round_number + 1 if resume else 1
    global_model = federation.init_model(resume.checkpoint if resume else None)
    state: Mapping[str, Any] | None = global_model.get("state")
    federation.hold(global_model)
    for round_number in range(first_round, config.rounds + 1):
        start = time.perf_counter()
        selected = federation.sample(strategy, round_number)
        trains = {
            site: federation.train(site, round_number, global_model, instructions)
            for site in selected
        }
        updates, late, failed = _collect(federation, trains, global_model, config.round_deadline)
        if len(updates) < config.min_clients:
            failures = _summarize(failed)
            raise RunStoppedError(
                f"round {round_number}: {len(updates)} of {len(selected)} sites returned "
                f"an update in time, fewer than min_clients={config.min_clients}"
                + (f" ({failures})" if failures else "")
            )
        last = round_number == config.rounds
        aggregate = federation.aggregate(
            strategy,
            global_model,
            updates,
            state=state,
            save=last,
            checkpoint=checkpoint_dir(federation.run_dir, round_number),
        )
        evaluation = federation.evaluate(aggregate)
        local_evaluations = federation.evaluate_sites(aggregate)
        new_global = federation.settle(aggregate)
        federation.hold(new_global)
        metrics = evaluation.result()
        local_metrics = [local.result() for local in local_evaluations]
        round_seconds = time.perf_counter() - start

        # The old global model (with its strategy state) and the updates: nobody needs them now.
        federation.release(global_model, *updates)
        global_model, state = new_global, new_global.get("state")

        row = _round_row(round_number, updates, late, failed, new_global, metrics, round_seconds)
        for local in local_metrics:
            row[f"site{local['site']}_accuracy"] = local["accuracy"]
            row[f"site{local['site']}_loss"] = local["loss"]
        federation.rounds_log.write(row)
        federation.log_sites(round_number, updates)
        if round_number == 1:
            federation.write_partition_summary(updates, local_metrics)
        mark_complete(federation.run_dir, round_number)
        federation.progress(
            f"round {round_number:>3}/{config.rounds}  accuracy {metrics['accuracy']:.4f}"
            f"  loss {metrics['loss']:.4f}  round {round_seconds:.2f}s"
            f"  (train max {row['train_seconds_max']:.2f}s,"
            f" aggregate {row['aggregate_seconds']:.2f}s,"
            f" evaluate {row['evaluate_seconds']:.2f}s"
            + (f", late: {row['late_site_ids']}" if late else "")
            + (f", failed: {row['failed_site_ids']}" if failed else "")
            + ")"
        )
        yield row


def _collect(
    federation: Federation,
    trains: dict[int, Future[Any]],
    global_model: Mapping[str, Any],
    deadline: float | None,
) -> tuple[list[dict[str, Any]], list[int], dict[int, str]]:
    """The updates that arrived (all, or those in by the deadline), the late sites, and the
    sites whose app failed (after Parsl's retries) with the reason.

    Late sites' apps keep running; their updates are evicted as soon as they arrive.
    """
    done, _ = concurrent.futures.wait(trains.values(), timeout=deadline)
    updates, late, failed = [], [], {}
    for site, future in trains.items():
        if future not in done:
            late.append(site)
            federation.discard_when_done(future, started_from=global_model)
        elif future.exception() is not None:
            failed[site] = _reason(future.exception())
            federation.settle_failed(future)
        else:
            updates.append(federation.settle(future))
    return updates, late, failed


def _summarize(failed: dict[int, str]) -> str:
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


def _reason(error: BaseException | None) -> str:
    """One line on why an app failed."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    # Long reasons (a worker's captured stderr) keep their start and their end, where the
    # actual cause (e.g. ssh's own message) usually is.
    return text if len(text) <= 2000 else f"{text[:800]} ... {text[-1100:]}"


def _round_row(
    round_number: int,
    updates: list[dict[str, Any]],
    late: list[int],
    failed: dict[int, str],
    new_global: dict[str, Any],
    metrics: dict[str, Any],
    round_seconds: float,
) -> dict[str, Any]:
    samples = sum(u["num_samples"] for u in updates)
    row: dict[str, Any] = {
        "round": round_number,
        "sites": len(updates),
        "site_ids": " ".join(str(u["site"]) for u in updates),
        "late_site_ids": " ".join(str(site) for site in late),
        "failed_site_ids": " ".join(str(site) for site in failed),
        "failures": _summarize(failed),
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "round_seconds": round_seconds,
        "train_seconds_max": max(u["train_seconds"] for u in updates),
        "resolve_seconds_max": max(u["resolve_seconds"] for u in updates),
        "put_seconds_max": max(u["put_seconds"] for u in updates),
        "aggregate_seconds": new_global["aggregate_seconds"],
        "aggregate_resolve_seconds": new_global["resolve_seconds"],
        "aggregate_put_seconds": new_global["put_seconds"],
        "checkpoint_seconds": new_global["checkpoint_seconds"],
        "evaluate_seconds": metrics["evaluate_seconds"],
        "model_bytes": new_global["model_bytes"],
        "train_loss": sum(u["train_loss"] * u["num_samples"] for u in updates) / samples,
    }
    for update in updates:
        row[f"site{update['site']}_train_seconds"] = update["train_seconds"]
        row[f"site{update['site']}_resolve_seconds"] = update["resolve_seconds"]
    return row


def _write_plots(run_dir: Path, progress: Callable[[str], None]) -> None:
    """The run's PNG plots; a plotting failure only warns, the CSV files are the results."""
    from proxyflox.plot import plot_run  # matplotlib loads only when a run has finished

    try:
        plot_run(run_dir)
    except Exception as err:
        progress(f"warning: plots not written: {type(err).__name__}: {err}")
