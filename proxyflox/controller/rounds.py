"""Synchronous rounds: the federated algorithm as the controller runs it.

Per round::

    sites   = plan.sample(strategy, round)                 which sites train
    updates = train(site, global model) on each site       each returns a reference to its update
              ... all of them, or those in by round_deadline (late ones are dropped)
    model   = aggregate(global model, updates)             on the aggregator: a new reference
    metrics = evaluate(model)                              on the aggregator
    record the round; checkpoint complete

The controller never resolves weights: it forwards references and, through the ledger, evicts
each round's objects once nobody needs them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from proxyflox.checkpoints import ResumePoint, accepted_rounds, checkpoint_dir, mark_complete
from proxyflox.controller.context import RunContext
from proxyflox.controller.records import failure_reason, round_row, summarize_failures
from proxyflox.errors import RunStoppedError
from proxyflox.messages import Instructions, TrainResult
from proxyflox.strategies import Strategy


def run_rounds(
    run: RunContext, strategy: Strategy, resume: ResumePoint | None = None
) -> Iterator[dict[str, object]]:
    """Run the rounds; yield each round's ``rounds.csv`` row as it is written."""
    config, ledger, runtime = run.config, run.ledger, run.runtime
    instructions = Instructions(
        **strategy.train_instructions(), update_kind=strategy.update_kind, run_key=run.run_dir.name
    )
    first_round = resume.round_number + 1 if resume else 1
    # Each site's last aggregated round: its error-feedback residual continues from there.
    accepted = accepted_rounds(run.run_dir) if resume else {}
    feeds_back = any(setup.state_dir is not None for setup in run.plan.setups.values())
    global_model = ledger.claim(ledger.expect(runtime.init(resume.checkpoint if resume else None)))
    run.observer.run_started(run.seconds())
    for round_number in range(first_round, config.rounds + 1):
        start = time.perf_counter()
        sites = run.plan.sample(strategy, round_number)
        run.observer.round_started(round_number, sites)
        trains = {
            site: ledger.expect(
                runtime.train(
                    site,
                    round_number,
                    global_model,
                    instructions,
                    accepted.get(site) if feeds_back else None,
                ),
                uses=[global_model],
            )
            for site in sites
        }
        arrived = collect(run, round_number, trains, config.round_deadline)
        if len(arrived.updates) < config.min_clients:
            failures = summarize_failures(arrived.failed)
            raise RunStoppedError(
                f"round {round_number}: {len(arrived.updates)} of {len(sites)} sites returned "
                f"an update in time, fewer than min_clients={config.min_clients}"
                + (f" ({failures})" if failures else "")
            )
        for update in arrived.updates:
            run.observer.trained(round_number, update)

        last = round_number == config.rounds
        aggregate = ledger.claim(
            ledger.expect(
                runtime.aggregate(
                    strategy,
                    global_model,
                    arrived.updates,
                    save_path=run.run_dir / "model.pt" if last else None,
                    checkpoint_dir=checkpoint_dir(run.run_dir, round_number),
                )
            )
        )
        run.observer.aggregated(round_number, aggregate)
        evaluation = runtime.evaluate(aggregate.model)
        local_evaluations = runtime.evaluate_sites(aggregate.model) if config.evaluate_sites else []
        metrics = evaluation.result()
        local_metrics = [local.result() for local in local_evaluations]
        round_seconds = time.perf_counter() - start
        run.observer.evaluated(round_number, metrics)

        # The old global model (with its strategy state) and the updates: nobody needs them now.
        ledger.release(global_model, *arrived.updates)
        global_model = aggregate.model
        accepted.update((update.site, round_number) for update in arrived.updates)

        row = round_row(
            round_number,
            arrived.updates,
            arrived.late,
            arrived.failed,
            aggregate,
            metrics,
            local_metrics,
            round_seconds,
        )
        run.records.write_round(row)
        run.records.write_sites(round_number, arrived.updates)
        if round_number == 1:
            run.records.write_partition(arrived.updates, local_metrics)
        mark_complete(run.run_dir, round_number)
        run.observer.round_finished(round_number, row)
        yield row
    if feeds_back:  # done: no resume will read the sites' residuals
        concurrent.futures.wait(runtime.forget_site_state(instructions.run_key))


@dataclass
class Arrivals:
    """What came back from a round's train apps."""

    updates: list[TrainResult] = field(default_factory=list)
    #: Sites that missed the deadline: their apps run on, their updates are evicted on arrival.
    late: list[int] = field(default_factory=list)
    #: Sites whose app failed (after Parsl's retries), with the reason.
    failed: dict[int, str] = field(default_factory=dict)


def collect(
    run: RunContext,
    round_number: int,
    trains: dict[int, Future[TrainResult]],
    deadline: float | None,
) -> Arrivals:
    """Wait for every train app, or until ``deadline`` seconds have passed.

    The observer hears of each app as it returns (a live status counts them).
    """
    sites = {future: site for site, future in trains.items()}
    done: set[Future[TrainResult]] = set()
    with contextlib.suppress(concurrent.futures.TimeoutError):
        for future in concurrent.futures.as_completed(sites, timeout=deadline):
            done.add(future)
            run.observer.site_returned(round_number, sites[future])
    arrivals = Arrivals()
    for site, future in trains.items():
        if future not in done:
            arrivals.late.append(site)
            run.ledger.drop(future)
        elif future.exception() is not None:
            arrivals.failed[site] = failure_reason(future.exception())
            run.ledger.drop(future)
        else:
            arrivals.updates.append(run.ledger.claim(future))
    return arrivals
