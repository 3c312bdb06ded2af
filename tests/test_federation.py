"""Whole runs on parsl_configs/local.py (threads in this process): results, outputs, store."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from proxyflox.apps import evaluate_global, shuffle_seed, site_data
from proxyflox.controller import AppBodies, RunObserver, RunResult, run_federation
from proxyflox.controller.planner import data_spec, plan_run
from proxyflox.controller.runtime import ParslRuntime
from proxyflox.messages import AggregateResult, Evaluation, SiteSetup
from proxyflox.models.weights import weights_of
from proxyflox.results import create_run_dir, read_rounds, round_columns
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from proxyflox.training import train_local
from tests.helpers import DEFAULT_EXPERIMENT, experiment_model

Runner = Callable[..., RunResult]


def test_a_short_run_writes_its_outputs_and_leaves_no_store_behind(
    run_local: Runner, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    result = run_local(rounds=3, **{"store.directory": str(store_dir), "store.access_log": "true"})
    run_dir = result.run_dir
    with open(run_dir / "rounds.csv", newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert reader.fieldnames == round_columns(4)
    assert [row["round"] for row in rows] == ["1", "2", "3"]
    assert all(row["sites"] == "4" and row["site_ids"] == "0 1 2 3" for row in rows)
    assert float(rows[-1]["accuracy"]) > float(rows[0]["accuracy"])
    assert all(float(row["site3_resolve_seconds"]) > 0 for row in rows)
    assert int(rows[0]["model_bytes"]) == sum(
        p.numel() * 4
        for p in experiment_model(load_experiment(DEFAULT_EXPERIMENT)).state_dict().values()
    )
    with open(run_dir / "sites.csv", newline="") as file:
        assert len(list(csv.DictReader(file))) == 3 * 4
    assert set(torch.load(run_dir / "model.pt")) == set(
        experiment_model(load_experiment(DEFAULT_EXPERIMENT)).state_dict()
    )
    assert (run_dir.stat().st_mode & 0o777) == 0o700

    # Lifetimes: everything the run put was evicted, and the store directory is empty.
    log = [line.split("\t") for line in (run_dir / "store-access.log").read_text().splitlines()]
    put = {key for _, op, key in log if op == "put"}
    evicted = {key for _, op, key in log if op == "evict"}
    assert len(put) == 1 + 3 * (4 + 1)  # initial model, then 4 updates + 1 global per round
    assert put == evicted
    assert list(store_dir.iterdir()) == []


def test_the_default_store_directory_is_removed_after_the_run(run_local: Runner) -> None:
    result = run_local(rounds=1)
    assert not (result.run_dir / "store").exists()


def test_same_seed_gives_identical_accuracy_and_loss(run_local: Runner) -> None:
    first = run_local(rounds=3, partition="dirichlet", alpha="0.5")
    second = run_local(rounds=3, partition="dirichlet", alpha="0.5")
    assert [(r["accuracy"], r["loss"]) for r in first.rounds] == [
        (r["accuracy"], r["loss"]) for r in second.rounds
    ]
    other = run_local(rounds=3, partition="dirichlet", alpha="0.5", seed="1")
    assert [r["loss"] for r in other.rounds] != [r["loss"] for r in first.rounds]


def test_direct_transfer_gives_the_same_weights_as_proxies(run_local: Runner) -> None:
    via_proxies = run_local(rounds=2, transfer="proxy")
    via_parsl = run_local(rounds=2, transfer="direct")
    a = torch.load(via_proxies.run_dir / "model.pt")
    b = torch.load(via_parsl.run_dir / "model.pt")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert via_proxies.rounds[-1]["loss"] == via_parsl.rounds[-1]["loss"]


def test_fedavg_on_one_site_equals_centralized_training_bit_for_bit(run_local: Runner) -> None:
    rounds = 3
    federated = run_local(rounds=rounds, sites=1, local_epochs=2)
    config = load_experiment(DEFAULT_EXPERIMENT, {"sites": 1, "local_epochs": 2})

    # Centralized: the same model on all the training data, same epochs and batch order,
    # an optimizer started afresh where each round starts.
    torch.set_num_threads(config.torch_threads)
    model = experiment_model(config)
    data = site_data(data_spec(config, num_sites=1), site=0)
    assert len(data) == 1437
    for round_number in range(1, rounds + 1):
        train_local(
            model,
            data,
            epochs=2,
            batch_size=config.batch_size,
            lr=config.lr,
            momentum=config.momentum,
            shuffle_seed=shuffle_seed(config.seed, round_number, 0),
        )
    central = weights_of(model)
    saved = torch.load(federated.run_dir / "model.pt")
    assert set(saved) == set(central)
    for name, array in central.items():
        assert saved[name].numpy().tobytes() == array.tobytes(), name


def test_every_executor_is_primed_with_its_own_sites_once_parsl_loads(tmp_path: Path) -> None:
    deployment = load_deployment("local.py")
    plan = plan_run(load_experiment(DEFAULT_EXPERIMENT, {"sites": "6"}), deployment)
    with ParslRuntime(deployment.parsl_config, plan, tmp_path, None, 0) as runtime:
        primed = {label: future.result(timeout=60) for label, future in runtime.primings.items()}
    assert {label: [entry.split(":")[0] for entry in p.loaded] for label, p in primed.items()} == {
        "site-0": ["site 0", "site 4"],
        "site-1": ["site 1", "site 5"],
        "site-2": ["site 2"],
        "site-3": ["site 3"],
        "aggregator": ["test"],
    }
    assert all(p.error == "" for p in primed.values())


def test_without_a_priming_body_nothing_is_primed(tmp_path: Path) -> None:
    deployment = load_deployment("local.py")
    plan = plan_run(load_experiment(DEFAULT_EXPERIMENT), deployment)
    with ParslRuntime(
        deployment.parsl_config, plan, tmp_path, None, 0, AppBodies(prime=None)
    ) as runtime:
        assert runtime.primings == {}


class RecordingObserver(RunObserver):
    """Keeps every event in order, and evaluates each new global model at once, in this process
    (what a round that waited for its evaluation would have recorded)."""

    def __init__(self, setup: SiteSetup) -> None:
        self.setup = setup
        self.events: list[tuple[str, int]] = []
        self.at_once: dict[int, Evaluation] = {}

    def round_started(self, round_number: int, sites: Sequence[int]) -> None:
        self.events.append(("started", round_number))

    def aggregated(self, round_number: int, result: AggregateResult) -> None:
        self.events.append(("aggregated", round_number))
        self.at_once[round_number] = evaluate_global(self.setup, result.model)

    def evaluated(self, round_number: int, evaluation: Evaluation) -> None:
        self.events.append(("evaluated", round_number))

    def round_finished(self, round_number: int, row: Mapping[str, Any]) -> None:
        self.events.append(("finished", round_number))


def test_each_row_holds_its_own_rounds_evaluation_made_while_the_next_round_trains(
    tmp_path: Path,
) -> None:
    rounds = 4
    config = load_experiment(
        DEFAULT_EXPERIMENT,
        {
            "rounds": rounds,
            "evaluate_sites": "true",
            "runs_dir": str(tmp_path / "runs"),
            "store.access_log": "true",
        },
    )
    deployment = load_deployment("local.py")
    plan = plan_run(config, deployment)
    observer = RecordingObserver(plan.setups[plan.aggregator])
    run_dir = create_run_dir(config.runs_dir, config.name)
    result = run_federation(
        config, deployment, run_dir, progress=lambda line: None, plan=plan, observer=observer
    )

    assert [row["round"] for row in read_rounds(run_dir)] == [str(r) for r in range(1, rounds + 1)]
    for row in result.rounds:
        alone = observer.at_once[int(row["round"])]
        assert (row["accuracy"], row["loss"]) == (alone.accuracy, alone.loss)
        assert all(f"site{site}_accuracy" in row for site in range(4))
    events = observer.events
    for r in range(1, rounds + 1):
        assert [name for name, n in events if n == r] == [
            "started", "aggregated", "evaluated", "finished"
        ]  # fmt: skip
    # Round r's evaluation came in while round r+1 ran; the last one before the run ended.
    for r in range(1, rounds):
        assert events.index(("started", r + 1)) < events.index(("evaluated", r))
        assert events.index(("finished", r)) < events.index(("aggregated", r + 1))
    assert events[-2:] == [("evaluated", rounds), ("finished", rounds)]
    assert [n for name, n in events if name == "finished"] == list(range(1, rounds + 1))

    # Every model stayed in the store until its evaluations were in, and nothing is left.
    log = [line.split("\t") for line in (run_dir / "store-access.log").read_text().splitlines()]
    put = {key for _, op, key in log if op == "put"}
    assert len(put) == 1 + rounds * (4 + 1)
    assert put == {key for _, op, key in log if op == "evict"}
