"""Synchronous rounds: the federated algorithm as the controller runs it.

Per round::

    sites   = plan.sample(strategy, round)                 which sites train
    updates = train(site, global model) on each site       each returns a reference to its update
              ... all of them, or those in by round_deadline (late ones are dropped)
    model   = aggregate(global model, updates)             on the aggregator: a new reference
    evaluate(model)                                        on the aggregator, not waited for
    ... next round: mark the checkpoint; with its aggregate running, write the row

The evaluation of round r runs while round r+1 trains, so a round waits only for what its
deadline and ``min_clients`` need: its updates, then its aggregate. Rows are still written in
round order, each with its own round's evaluation (round r's while round r+1 aggregates); the
last round's evaluation is awaited before the run ends. Round r's checkpoint is marked once round
r+1's train apps are out, with its row less the evaluation (``checkpoints.write_pending_row``);
a run stopped before the evaluation came back evaluates that checkpoint again on resume and
writes the row before the next round's.

The controller never resolves weights: it forwards references and, through the ledger, evicts
each round's objects once nobody needs them (an evaluated model stays until its evaluation is in).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from proxyflox.checkpoints import (
    ResumePoint,
    accepted_rounds,
    checkpoint_dir,
    mark_complete,
    read_pending_row,
    write_pending_row,
)
from proxyflox.controller.context import RunContext
from proxyflox.controller.records import (
    evaluation_columns,
    failure_reason,
    round_row,
    summarize_failures,
)
from proxyflox.controller.tree import tree_round
from proxyflox.errors import RunStoppedError, TooFewUpdatesError
from proxyflox.messages import Evaluation, GlobalModel, Instructions, Rejection, TrainResult
from proxyflox.results import read_rounds
from proxyflox.strategies import Strategy


@dataclass
class PendingRound:
    """A round whose model is made and checkpointed while its evaluation still runs."""

    round_number: int
    #: The round's ``rounds.csv`` row, every column but the evaluation's.
    row: dict[str, Any]
    evaluation: Future[Evaluation]
    local_evaluations: list[Future[Evaluation]]
    #: ``partition.csv``'s train rows, for the first round only (written with its evaluation).
    partition: list[dict[str, Any]]


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
    pending = unevaluated(run, global_model, resume) if resume else None
    # The last aggregated round, until its checkpoint is marked (once the next round's train
    # apps are out, so that the files' writes and syncs are off the critical path).
    unmarked: tuple[PendingRound, list[TrainResult]] | None = None
    for round_number in range(first_round, config.rounds + 1):
        start = time.perf_counter()
        sites = run.plan.sample(strategy, round_number)
        run.observer.round_started(round_number, sites)
        # What follows the strategy state (dpfedavg's clip norm) comes with the global model.
        started_from = global_model.state_scalars
        told = replace(instructions, **strategy.round_instructions(started_from))
        train = functools.partial(
            submit_train, run, round_number, told, accepted if feeds_back else {}
        )
        # The previous round's records, while this round trains.
        previous = functools.partial(mark, run, *unmarked) if unmarked else lambda: None
        unmarked = None
        if run.plan.tree is None:
            trains = {site: train(site, global_model) for site in sites}
            previous()
            arrived = collect(run, round_number, trains, config.round_deadline)
        else:
            below = tree_round(
                run, round_number, sites, global_model, train, previous, config.round_deadline
            )
            arrived = Arrivals(below.updates, below.late, below.failed, [*below.inputs], below.held)
        if len(arrived.updates) < config.min_clients:
            if pending is not None:  # the previous round's row, before the run stops
                yield finish(run, pending)
            failures = summarize_failures(arrived.failed)
            raise RunStoppedError(
                f"round {round_number}: {len(arrived.updates)} of {len(sites)} sites returned "
                f"an update in time, fewer than min_clients={config.min_clients}"
                + (f" ({failures})" if failures else "")
            )
        for update in arrived.updates:
            run.observer.trained(round_number, update)

        last = round_number == config.rounds
        aggregating = ledger.expect(
            runtime.aggregate(
                strategy,
                global_model,
                arrived.consumed(),
                save_path=run.run_dir / "model.pt" if last else None,
                checkpoint_dir=checkpoint_dir(run.run_dir, round_number),
                # A tree's root reads partials: min_clients was counted over sites above.
                min_updates=config.min_clients if run.plan.tree is None else 1,
            )
        )
        # The previous round's evaluation ran beside this round's training and, on the
        # aggregator, before this aggregate: its row is written while the aggregate runs.
        if pending is not None:
            yield finish(run, pending)
        try:
            aggregate = ledger.claim(aggregating)
        except TooFewUpdatesError as err:
            failed = arrived.failed | left_out_sites(arrived, err.rejected)
            raise RunStoppedError(
                f"round {round_number}: {len(arrived.updates) - len(err.rejected)} of "
                f"{len(sites)} sites sent an update that passed the aggregator's checks, fewer "
                f"than min_clients={config.min_clients} ({summarize_failures(failed)})"
            ) from None
        round_seconds = time.perf_counter() - start
        run.observer.aggregated(round_number, aggregate)
        # Updates the aggregator left out count as failed sites of the round, with its reason.
        left_out = left_out_sites(arrived, aggregate.rejected)
        used = [update for update in arrived.updates if update.site not in left_out]
        failed = arrived.failed | left_out
        pending = PendingRound(
            round_number,
            round_row(round_number, used, arrived.late, failed, aggregate, round_seconds)
            | strategy.round_report(round_number, started_from),
            *evaluate(run, aggregate.model),
            partition=run.records.partition_rows("train", arrived.updates)
            if round_number == 1
            else [],
        )

        # The old global model (with its strategy state) and the updates: nobody needs them now.
        ledger.release(global_model, *arrived.consumed(), *arrived.held)
        global_model = aggregate.model
        accepted.update((update.site, round_number) for update in used)
        unmarked = (pending, used)
    if unmarked is not None:
        mark(run, *unmarked)
    if pending is not None:
        yield finish(run, pending)
    if feeds_back:  # done: no resume will read the sites' residuals
        concurrent.futures.wait(runtime.forget_site_state(instructions.run_key))


def submit_train(
    run: RunContext,
    round_number: int,
    instructions: Instructions,
    accepted: dict[int, int],
    site: int,
    model: GlobalModel,
) -> Future[TrainResult]:
    """A site's train app from ``model``; ``accepted``: where its residual continues from."""
    future = run.runtime.train(site, round_number, model, instructions, accepted.get(site))
    return run.ledger.expect(future, uses=[model])


def mark(run: RunContext, pending: PendingRound, updates: list[TrainResult]) -> None:
    """Make a round's checkpoint the one a resume continues from.

    First its ``sites.csv`` rows and its row less the evaluation (which a resume needs), then
    ``checkpoints/latest``: the previous round's row is written by then, so its checkpoint may go.
    """
    run.records.write_sites(pending.round_number, updates)
    write_pending_row(run.run_dir, pending.round_number, pending.row, pending.partition)
    mark_complete(run.run_dir, pending.round_number)


def evaluate(
    run: RunContext, model: GlobalModel
) -> tuple[Future[Evaluation], list[Future[Evaluation]]]:
    """Submit the global and (``evaluate_sites``) the local evaluations of ``model``.

    The ledger keeps ``model`` until they are in.
    """
    runtime, ledger = run.runtime, run.ledger
    evaluation = ledger.expect(runtime.evaluate(model), uses=[model])
    local = runtime.evaluate_sites(model) if run.config.evaluate_sites else []
    return evaluation, [ledger.expect(future, uses=[model]) for future in local]


def finish(run: RunContext, pending: PendingRound) -> dict[str, Any]:
    """Wait for a round's evaluations and write its row (and, after round 1, ``partition.csv``)."""
    metrics = run.ledger.claim(pending.evaluation)
    local_metrics = [run.ledger.claim(local) for local in pending.local_evaluations]
    run.observer.evaluated(pending.round_number, metrics)
    row = pending.row | evaluation_columns(metrics, local_metrics)
    run.records.write_round(row)
    if pending.partition:
        run.records.write_partition(pending.partition, local_metrics)
    run.observer.round_finished(pending.round_number, row)
    return row


def unevaluated(run: RunContext, model: GlobalModel, resume: ResumePoint) -> PendingRound | None:
    """The checkpointed round of a resumed run whose row was not written, evaluated anew.

    A run stopped while that round's evaluation ran; the checkpoint holds the same model.
    """
    if any(int(row["round"]) == resume.round_number for row in read_rounds(run.run_dir)):
        return None
    row, partition = read_pending_row(run.run_dir, resume.round_number)
    return PendingRound(resume.round_number, row, *evaluate(run, model), partition=partition)


@dataclass
class Arrivals:
    """What came back from a round's train apps."""

    updates: list[TrainResult] = field(default_factory=list)
    #: Sites that missed the deadline: their apps run on, their updates are evicted on arrival.
    late: list[int] = field(default_factory=list)
    #: Sites whose app failed (after Parsl's retries), with the reason (the aggregator adds the
    #: sites whose update it left out).
    failed: dict[int, str] = field(default_factory=dict)
    #: What the aggregate consumes, where not ``updates``: in a tree, the root's own sites'
    #: updates and its groups' partials.
    inputs: list[Any] | None = None
    #: Records held until the round's aggregate is made (the groups' copies of the model).
    held: list[Any] = field(default_factory=list)

    def consumed(self) -> list[Any]:
        """What the round's aggregate reads, held by the controller until it is made."""
        return self.updates if self.inputs is None else self.inputs


def left_out_sites(arrived: Arrivals, rejected: Sequence[Rejection]) -> dict[int, str]:
    """The sites behind the updates the aggregator left out, with its reason.

    A rejection names its position among what the aggregate read: a site's update, or in a
    tree a group's partial, which stands for all the group's sites.
    """
    inputs = arrived.consumed()
    left_out: dict[int, str] = {}
    for position, site, why in rejected:
        sites = getattr(inputs[position], "sites", (site,))
        left_out.update((each, why) for each in sites)
    return left_out


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
