"""Strategies in whole runs: FedProx, sampling, deadlines, and asynchronous FedAsync/FedBuff."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from proxyflox.apps import init_global_model, train_site
from proxyflox.controller import RunResult, RunStoppedError
from proxyflox.messages import InitTask, Instructions
from proxyflox.settings import load_experiment
from tests.helpers import DEFAULT_EXPERIMENT, experiment_setup

Runner = Callable[..., RunResult]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def access_log(run_dir: Path) -> tuple[set[str], set[str]]:
    """Keys put and keys evicted, from ``store-access.log``."""
    lines = [line.split("\t") for line in (run_dir / "store-access.log").read_text().splitlines()]
    put = {key for _, op, key in lines if op == "put"}
    return put, {key for _, op, key in lines if op == "evict"}


def test_fedprox_with_mu_0_is_fedavg_bit_for_bit(run_local: Runner) -> None:
    fedavg = run_local(rounds=2, partition="dirichlet", alpha="0.3")
    fedprox = run_local(
        rounds=2, partition="dirichlet", alpha="0.3",
        **{"strategy.name": "fedprox", "strategy.proximal_mu": "0"},
    )  # fmt: skip
    a, b = torch.load(fedavg.run_dir / "model.pt"), torch.load(fedprox.run_dir / "model.pt")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_fedprox_pulls_local_weights_toward_the_global_model() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"local_epochs": "3"})
    setup = experiment_setup(config)
    global_model = init_global_model(InitTask(setup, None))

    def distance_after_training(mu: float) -> float:
        update = train_site(setup, 0, 1, global_model, Instructions(proximal_mu=mu))
        return float(
            np.sqrt(
                sum(
                    ((update.update[k] - global_model.weights[k]) ** 2).sum() for k in update.update
                )
            )
        )

    assert distance_after_training(1.0) < 0.8 * distance_after_training(0.0)


def test_server_strategies_learn(run_local: Runner) -> None:
    for name in ("fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        result = run_local(rounds=4, **{"strategy.name": name})
        assert result.final_accuracy > 0.5, name
        assert (result.run_dir / "model.pt").exists()


def test_client_sampling_picks_seeded_subsets(run_local: Runner) -> None:
    first = run_local(rounds=3, sites=8, clients_per_round=3)
    again = run_local(rounds=3, sites=8, clients_per_round=3)
    picks = [row["site_ids"] for row in first.rounds]
    assert all(len(ids.split()) == 3 for ids in picks)
    assert len(set(picks)) > 1  # different sites in different rounds
    assert picks == [row["site_ids"] for row in again.rounds]
    half = run_local(rounds=1, sites=8, fraction="0.5")
    assert half.rounds[0]["sites"] == 4


def test_a_slow_site_is_dropped_by_the_deadline_and_its_objects_evicted(
    run_local: Runner,
) -> None:
    result = run_local(
        rounds=2, round_deadline="2", min_clients=3,
        **{"site_options.site-3.local_epochs": "100", "store.access_log": "true"},
    )  # fmt: skip
    rows = read_csv(result.run_dir / "rounds.csv")
    assert [row["late_site_ids"] for row in rows] == ["3", "3"]
    assert [row["site_ids"] for row in rows] == ["0 1 2", "0 1 2"]
    put, evicted = access_log(result.run_dir)
    assert len(put) == 1 + 2 * (4 + 1)  # the late site's two updates were put, and evicted
    assert put == evicted


def test_too_few_sites_by_the_deadline_stops_the_run(run_local: Runner) -> None:
    with pytest.raises(RunStoppedError, match=r"round 1: 3 of 4 sites .* min_clients=4"):
        run_local(
            rounds=2, round_deadline="2", min_clients=4,
            **{"site_options.site-3.local_epochs": "100"},
        )  # fmt: skip


@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff"])
def test_async_keeps_fast_sites_busy_and_ends_by_its_budget(
    run_local: Runner, strategy: str
) -> None:
    result = run_local(
        max_updates=16,
        **{"strategy.name": strategy, "site_options.site-3.local_epochs": "40",
           "store.access_log": "true"},
    )  # fmt: skip
    updates = read_csv(result.run_dir / "updates.csv")
    assert len(updates) == 16
    per_site = Counter(row["site"] for row in updates)
    assert min(per_site[s] for s in "012") > per_site["3"]
    assert max(int(row["staleness"]) for row in updates) > 0
    expected_versions = 16 if strategy == "fedasync" else 16 // 3
    assert len(result.rounds) == expected_versions
    assert result.final_accuracy > 0.3
    put, evicted = access_log(result.run_dir)
    assert put == evicted
