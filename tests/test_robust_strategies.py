"""Robust aggregation (FedMedian, FedTrimmedAvg, Krum, MultiKrum) against hand math, their
refusals before a run starts, and the poisoning attack a site can be told to make."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor
from scipy import stats

from proxyflox.apps import init_global_model, train_site
from proxyflox.attacks import poisoned
from proxyflox.controller import RunResult
from proxyflox.controller.planner import plan_run
from proxyflox.errors import ConfigError
from proxyflox.messages import InitTask, Instructions
from proxyflox.settings import load_experiment
from proxyflox.sites import Deployment
from proxyflox.strategies import (
    STRATEGIES,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
    Update,
    build_strategy,
)
from proxyflox.strategies.every_update import WORKSPACE_BYTES
from proxyflox.strategies.krum import squared_distances
from proxyflox.weights import Weights
from tests.helpers import DEFAULT_EXPERIMENT, experiment_setup

Runner = Callable[..., RunResult]


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def updates(*models: dict[str, np.ndarray], samples: int = 1) -> list[Update]:
    return [Update({name: np.array(a) for name, a in model.items()}, samples) for model in models]


def aggregate(strategy: Strategy, models: list[Update]) -> Weights:
    new, state = strategy.aggregate_train({}, models, {})
    assert state == {}
    return new


def test_the_robust_rules_are_registered_and_need_every_update() -> None:
    for name in ("fedmedian", "fedtrimmedavg", "krum", "multikrum"):
        cls = STRATEGIES[name]
        assert cls.needs_every_update
        assert not cls.asynchronous
        assert cls.update_kind == "weights"  # they work on models, as Flower's do
    assert not STRATEGIES["fedavg"].needs_every_update


def test_median_by_hand_odd_and_even_and_integer_buffers() -> None:
    three = updates(
        {"w": f32(1, 10, 3), "n": np.array(10)},
        {"w": f32(2, 0, 100), "n": np.array(11)},
        {"w": f32(3, 5, -7), "n": np.array(13)},
    )
    new = aggregate(FedMedian(), three)
    np.testing.assert_array_equal(new["w"], f32(2, 5, 3))
    assert new["w"].dtype == np.float32
    assert new["n"].dtype == np.array(10).dtype
    assert int(new["n"]) == 11
    # Even n: the mean of the two middle values (np.median, Flower); 10.5 rounds to even.
    four = updates(
        *({"w": f32(v), "n": np.array(c)} for v, c in ((1, 10), (4, 11), (2, 9), (3, 12)))
    )
    new = aggregate(FedMedian(), four)
    np.testing.assert_array_equal(new["w"], f32(2.5))
    assert int(new["n"]) == 10


def test_median_ignores_sample_counts() -> None:
    models = updates({"w": f32(0)}, {"w": f32(1)}) + updates({"w": f32(5)}, samples=1000)
    np.testing.assert_array_equal(aggregate(FedMedian(), models)["w"], f32(1))


def test_trimmed_mean_by_hand_with_flowers_cut() -> None:
    models = updates(*({"w": f32(v, -v)} for v in (1, 2, 3, 4, 100)))
    # int(0.2 * 5) = 1 trimmed from each end: mean(2, 3, 4) = 3 in both columns.
    np.testing.assert_array_equal(
        aggregate(FedTrimmedAvg(trim_fraction=0.2), models)["w"], f32(3, -3)
    )
    # int(0.2 * 4) = 0: Flower truncates, so nothing is trimmed from four updates.
    models = updates(*({"w": f32(v)} for v in (1, 2, 3, 100)))
    np.testing.assert_array_equal(
        aggregate(FedTrimmedAvg(trim_fraction=0.2), models)["w"], f32(26.5)
    )
    # int(0.34 * 3) = 1 from each end of three: the median.
    models = updates(*({"w": f32(v)} for v in (7, -50, 8)))
    np.testing.assert_array_equal(aggregate(FedTrimmedAvg(trim_fraction=0.34), models)["w"], f32(7))


def test_trimmed_mean_matches_scipy_on_many_columns() -> None:
    rng = np.random.default_rng(0)
    stacked = rng.standard_normal((9, 6, 5)).astype(np.float32)
    models = updates(*({"w": row} for row in stacked))
    new = aggregate(FedTrimmedAvg(trim_fraction=0.25), models)
    np.testing.assert_allclose(new["w"], stats.trim_mean(stacked, 0.25, axis=0), rtol=1e-6)


def test_column_blocks_cover_arrays_larger_than_the_workspace() -> None:
    size = WORKSPACE_BYTES // (3 * 4) + 7  # more than one float32 block of three rows
    rows = [np.full(size, v, np.float32) for v in (1.0, 5.0, 2.0)]
    rows[1][-1] = -1.0
    new = aggregate(FedMedian(), updates(*({"w": row} for row in rows)))
    assert new["w"][0] == 2.0
    assert new["w"][-1] == 1.0
    assert new["w"].shape == (size,)


def krum_models() -> list[Update]:
    """Points 0, 1, 2, 3, 50 on a line, as (w, b) = (3p, 4p), plus counters.

    Squared distances are 25 (p - q)^2; to the n - f - 2 = 2 nearest (f = 1), over 25:
    0 -> 1 + 4 = 5; 1 -> 1 + 1 = 2; 2 -> 1 + 1 = 2; 3 -> 1 + 4 = 5; 50 -> 47^2 + 48^2 = 4513.
    The counter of model 1 is far off: distances leave integer arrays out.
    """
    points = (0.0, 1.0, 2.0, 3.0, 50.0)
    counters = (5, 1000, 5, 5, 5)
    return updates(
        *(
            {"w": f32(3 * p), "b": f32(4 * p), "n": np.array(c)}
            for p, c in zip(points, counters, strict=True)
        )
    )


def test_krum_scores_and_choice_by_hand() -> None:
    models = [u.weights for u in krum_models()]
    distances = squared_distances(models)
    assert distances[0, 4] == 25 * 2500
    assert distances[1, 1] == 0.0
    np.testing.assert_array_equal(
        Krum(byzantine=1).scores(models), 25 * np.array([5, 2, 2, 5, 4513])
    )
    new = aggregate(Krum(byzantine=1), krum_models())
    # The lowest score (a tie of 1 and 2 goes to the lower index): model 1, as it was sent.
    assert new["w"].tobytes() == f32(3).tobytes()
    assert int(new["n"]) == 1000


def test_multikrum_averages_the_lowest_scores_plainly() -> None:
    # keep = n - f = 4 by default: models 0, 1, 2, 3 -> point 1.5; counters (1000 + 15) / 4.
    new = aggregate(MultiKrum(byzantine=1), krum_models())
    np.testing.assert_array_equal(new["w"], f32(4.5))
    np.testing.assert_array_equal(new["b"], f32(6))
    assert int(new["n"]) == round(1015 / 4)
    # keep = 3: 1, 2, then the tie 0/3 goes to 0: point 1.0. Sample counts do not weigh in.
    models = krum_models()
    models[2] = Update(models[2].weights, 10_000)
    np.testing.assert_array_equal(aggregate(MultiKrum(byzantine=1, keep=3), models)["w"], f32(3))
    # keep = 1 is Krum.
    assert aggregate(MultiKrum(byzantine=1, keep=1), krum_models())["w"][0] == 3


def test_too_few_updates_for_the_attackers_are_errors_where_they_are_aggregated() -> None:
    four = [{"w": f32(v)} for v in range(4)]
    with pytest.raises(ValueError, match=r"krum with byzantine=1 needs more than 2f\+2 = 4"):
        aggregate(Krum(byzantine=1), updates(*four))
    with pytest.raises(ValueError, match="multikrum keeps 5 of 4 updates, more than"):
        aggregate(MultiKrum(byzantine=0, keep=5), updates(*four))
    with pytest.raises(ValueError, match="drops 0 of 4 updates from each end, fewer than"):
        aggregate(FedTrimmedAvg(trim_fraction=0.2, byzantine=1), updates(*four))
    with pytest.raises(ValueError, match="fedmedian with byzantine=2 needs at least 2f\\+1 = 5"):
        aggregate(FedMedian(byzantine=2), updates(*four))
    with pytest.raises(ValueError, match="disagree on the shape of 'w'"):
        aggregate(FedMedian(), updates({"w": f32(1)}, {"w": f32(1, 2)}))


def deployment(sites: int) -> Deployment:
    executors = [ThreadPoolExecutor(label=f"site-{i}") for i in range(sites)]
    config = Config(executors=[*executors, ThreadPoolExecutor(label="aggregator")])
    return Deployment(config, Path("test.py"), {})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"strategy.name": "krum", "strategy.byzantine": "1", "sites": "4"},
            "sites: rounds of 4 sites: krum with byzantine=1 needs more than 2f+2 = 4 updates "
            "per round, got 4",
        ),
        (
            {"strategy.name": "krum", "strategy.byzantine": "1", "sites": "8",
             "clients_per_round": "3", "min_clients": "3"},
            "clients_per_round: rounds of 3 sites: krum",
        ),
        (
            {"strategy.name": "krum", "strategy.byzantine": "1", "sites": "8"},
            "min_clients: a round may aggregate as few as min_clients=1 updates, but krum with "
            "byzantine=1 needs more than 2f+2 = 4 updates per round, got 1; set min_clients to "
            "at least 5",
        ),
        (
            {"strategy.name": "fedtrimmedavg", "strategy.byzantine": "1", "sites": "8",
             "min_clients": "4"},
            "drops 0 of 4 updates from each end, fewer than byzantine=1; set min_clients to at "
            "least 5",
        ),
        (
            {"strategy.name": "multikrum", "strategy.keep": "7", "sites": "8",
             "strategy.byzantine": "2", "min_clients": "6"},
            "sites: rounds of 8 sites: multikrum keeps 7 of 8 updates, more than the "
            "n - byzantine = 6",
        ),
        (
            {"strategy.name": "fedmedian", "sites": "8", "strategy.max_memory_mb": "2"},
            "strategy.max_memory_mb: fedmedian holds all 8 updates of a round at once, about",
        ),
        ({"strategy.trim_fraction": "0.5"}, "strategy.trim_fraction: must be"),
        ({"strategy.byzantine": "-1"}, "strategy.byzantine: must be"),
        ({"site_options.site-0.attack": "noise"}, "site_options.site-0.attack: unknown value"),
    ],
)  # fmt: skip
def test_configurations_that_cannot_work_are_refused_before_the_run(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        plan_run(load_experiment(DEFAULT_EXPERIMENT, overrides), deployment(8))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_configuration_that_works_is_planned_and_built() -> None:
    config = load_experiment(
        DEFAULT_EXPERIMENT,
        {"strategy.name": "multikrum", "strategy.byzantine": "1", "sites": "8", "min_clients": "5"},
    )
    assert plan_run(config, deployment(8)).sites_per_round == 8
    assert build_strategy(config.strategy) == MultiKrum(byzantine=1, keep=None)
    assert Krum(byzantine=1).aggregation_bytes(8, 1000) == 10 * 1000 + 2 * 8 * 1000 + 8 * 64


def test_sign_flip_reverses_and_scales_the_change_of_float_arrays_only() -> None:
    received = {"w": f32(1.0, 2.0), "n": np.array(3)}
    trained = {"w": f32(1.5, 1.0), "n": np.array(7)}
    sent = poisoned("sign_flip", 10.0, trained, received)
    # received - 10 * (trained - received) = (1 - 5, 2 + 10)
    np.testing.assert_array_equal(sent["w"], f32(-4.0, 12.0))
    assert sent["w"].dtype == np.float32
    assert int(sent["n"]) == 7


def test_the_attack_reaches_the_sites_of_its_executor_only() -> None:
    config = load_experiment(
        DEFAULT_EXPERIMENT,
        {"site_options.site-1.attack": "sign_flip", "site_options.site-1.attack_scale": "10"},
    )
    plan = plan_run(config, deployment(4))
    assert (plan.setups["site-1"].attack, plan.setups["site-1"].attack_scale) == ("sign_flip", 10.0)
    assert plan.setups["site-0"].attack is None
    assert plan.setups["aggregator"].attack is None


def test_an_attacking_site_trains_then_sends_the_flipped_scaled_change() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"transfer": "direct"})
    honest_setup = experiment_setup(config)
    attacking = dataclasses.replace(honest_setup, attack="sign_flip", attack_scale=10.0)
    global_model = init_global_model(InitTask(honest_setup, None))
    received = global_model.weights
    assert isinstance(received, dict)
    honest = train_site(honest_setup, 2, 1, global_model, Instructions()).update
    sent = train_site(attacking, 2, 1, global_model, Instructions()).update
    for name, array in sent.items():
        if array.dtype.kind == "f":
            expected = received[name] - 10 * (honest[name] - received[name])
            np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(array, honest[name])


def test_krum_withstands_the_attacker_that_breaks_fedavg(run_local: Runner) -> None:
    attack = {
        "sites": "5",
        "rounds": "3",
        "min_clients": "5",
        "site_options.site-1.attack": "sign_flip",
        "site_options.site-1.attack_scale": "10",
    }
    fedavg = run_local(**attack)
    krum = run_local(**attack, **{"strategy.name": "krum", "strategy.byzantine": "1"})
    # One site's change, reversed and 10x, outweighs the other four: FedAvg is at chance.
    assert fedavg.final_accuracy < 0.2
    assert krum.final_accuracy > 0.45  # Krum learns from one model per round: slower, but it learns
