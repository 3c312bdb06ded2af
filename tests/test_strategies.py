"""Server-side rules against hand-computed math on tiny arrays."""

from __future__ import annotations

import subprocess
import sys
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from proxyflox.errors import ConfigError
from proxyflox.settings import load_experiment
from proxyflox.strategies import (
    FedAdagrad,
    FedAdam,
    FedAsync,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedProx,
    FedYogi,
    StrategySettings,
    Update,
    build_strategy,
    weighted_mean,
)
from proxyflox.strategies.fedasync import staleness_weight
from tests.helpers import DEFAULT_EXPERIMENT


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


GLOBAL = {"w": f32(1.0, 2.0)}


def two_updates() -> list[Update]:
    """(3, 6) from 1 sample and (1, 2) from 3 samples: mean (1.5, 3.0), delta (0.5, 1.0).

    Fresh arrays each time: aggregation may add into an update's arrays.
    """
    return [Update({"w": f32(3.0, 6.0)}, 1), Update({"w": f32(1.0, 2.0)}, 3)]


def test_weighted_mean_matches_hand_computation() -> None:
    a = {"w": f32(1.0, 2.0), "b": np.array([[0.0]], dtype=np.float32)}
    b = {"w": f32(3.0, 6.0), "b": np.array([[4.0]], dtype=np.float32)}
    mean = weighted_mean([Update(a, 1), Update(b, 3)])
    # w: (1*1 + 3*3)/4 = 2.5, (2*1 + 6*3)/4 = 5.0 ; b: (0*1 + 4*3)/4 = 3.0
    np.testing.assert_array_equal(mean["w"], f32(2.5, 5.0))
    np.testing.assert_array_equal(mean["b"], np.array([[3.0]], dtype=np.float32))
    assert mean["w"].dtype == np.float32


def test_one_update_comes_back_bit_for_bit() -> None:
    update = {"w": np.random.default_rng(0).standard_normal(10_000).astype(np.float32)}
    original = update["w"].copy()
    mean = weighted_mean([Update(update, 1437)])
    assert mean["w"].tobytes() == original.tobytes()


def test_integer_buffers_stay_integers() -> None:
    n = np.int64
    updates = [Update({"n": np.array(10, n)}, 1), Update({"n": np.array(13, n)}, 1)]
    mean = weighted_mean(updates)
    assert mean["n"].dtype == np.int64
    assert int(mean["n"]) == 12  # 11.5 rounds to even


def test_each_update_is_released_before_the_next_is_fetched() -> None:
    previous: list[weakref.ref[np.ndarray]] = []

    def updates() -> Iterator[Update]:
        for i in range(5):
            # The first update's arrays become the accumulator; no other may stay alive.
            alive = sum(ref() is not None for ref in previous)
            assert alive <= 1, f"{alive} earlier updates are still alive"
            array = np.full(3, float(i), dtype=np.float32)
            previous.append(weakref.ref(array))
            yield Update({"w": array}, 1)
            del array

    np.testing.assert_array_equal(weighted_mean(updates())["w"], np.full(3, 2.0, np.float32))
    assert len(previous) == 5


def test_mismatched_updates_and_empty_rounds_are_errors() -> None:
    with pytest.raises(ValueError, match="disagree on parameter names"):
        weighted_mean([Update({"a": np.zeros(1)}, 1), Update({"b": np.zeros(1)}, 1)])
    with pytest.raises(ValueError, match="no updates"):
        weighted_mean([])


def test_fedavg_and_fedprox_average_on_the_server() -> None:
    for strategy in (FedAvg(), FedProx(proximal_mu=0.5)):
        new, state = strategy.aggregate_train(GLOBAL, two_updates(), {})
        np.testing.assert_array_equal(new["w"], f32(1.5, 3.0))
        assert state == {}
    assert FedProx(proximal_mu=0.5).train_instructions() == {"proximal_mu": 0.5}


def test_fedavgm_momentum_by_hand() -> None:
    strategy = FedAvgM(server_lr=1.0, server_momentum=0.5)
    # d = w - mean = (-0.5, -1.0); v = d; w = w - v = (1.5, 3.0)
    new, state = strategy.aggregate_train(GLOBAL, two_updates(), {})
    np.testing.assert_allclose(new["w"], f32(1.5, 3.0))
    # Second round from (1.5, 3.0) with the same updates: d = (0, 0); v = 0.5 * (-0.5, -1.0)
    new, state = strategy.aggregate_train(new, two_updates(), state)
    np.testing.assert_allclose(state["velocity"]["w"], [-0.25, -0.5])
    np.testing.assert_allclose(new["w"], f32(1.75, 3.5))


def test_fedavgm_without_momentum_is_fedavg() -> None:
    new, _ = FedAvgM(server_lr=1.0, server_momentum=0.0).aggregate_train(GLOBAL, two_updates(), {})
    np.testing.assert_array_equal(new["w"], f32(1.5, 3.0))


@pytest.mark.parametrize(
    ("strategy", "expected_v"),
    [
        # delta = (0.5, 1.0); Adam v = (1 - 0.99) * delta^2
        (FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.001), [0.0025, 0.01]),
        # Yogi from v = 0: v - (1 - b2) * d^2 * sign(0 - d^2) = +0.01 * d^2
        (FedYogi(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.001), [0.0025, 0.01]),
        # Adagrad: v = d^2
        (FedAdagrad(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.001), [0.25, 1.0]),
    ],
)
def test_server_optimizers_first_step_by_hand(strategy: FedAdam, expected_v: list[float]) -> None:
    new, state = strategy.aggregate_train(GLOBAL, two_updates(), {})
    delta = np.array([0.5, 1.0])
    m = 0.1 * delta
    v = np.array(expected_v)
    np.testing.assert_allclose(state["m"]["w"], m)
    np.testing.assert_allclose(state["v"]["w"], v)
    np.testing.assert_allclose(new["w"], GLOBAL["w"] + 0.1 * m / (np.sqrt(v) + 0.001), rtol=1e-6)


def test_fedyogi_second_step_shrinks_v_toward_small_deltas() -> None:
    strategy = FedYogi(server_lr=0.1, beta2=0.9, tau=0.001)
    state = {"m": {"w": np.zeros(2)}, "v": {"w": np.array([2.0, 2.0])}}
    _, state = strategy.aggregate_train(GLOBAL, two_updates(), state)
    # v - (1 - 0.9) * d^2 * sign(v - d^2) with v = 2 > d^2: 2 - 0.1 * (0.25, 1.0)
    np.testing.assert_allclose(state["v"]["w"], [1.975, 1.9])


@pytest.mark.parametrize(
    ("kind", "staleness", "expected"),
    [
        ("constant", 7, 1.0),
        ("polynomial", 3, 4**-0.5),
        ("hinge", 4, 1.0),
        ("hinge", 6, 1 / (0.5 * 2 + 1)),
    ],
)
def test_staleness_functions(kind: str, staleness: int, expected: float) -> None:
    assert staleness_weight(kind, staleness, a=0.5, b=4) == pytest.approx(expected)


def test_fedasync_mixes_each_update_by_its_staleness() -> None:
    strategy = FedAsync(alpha=0.5, staleness="polynomial", staleness_a=1.0)
    update = Update({"w": f32(3.0, 6.0)}, 10, staleness=1)  # S = 1/2, so mix = 0.25
    new, _ = strategy.aggregate_train(GLOBAL, [update], {})
    np.testing.assert_allclose(new["w"], 0.75 * GLOBAL["w"] + 0.25 * f32(3.0, 6.0))


def test_fedbuff_applies_the_mean_change() -> None:
    deltas = [Update({"w": f32(1.0, 1.0)}, 1), Update({"w": f32(-1.0, 3.0)}, 1)]
    new, _ = FedBuff(buffer_size=2, server_lr=0.5).aggregate_train(GLOBAL, deltas, {})
    np.testing.assert_allclose(new["w"], GLOBAL["w"] + 0.5 * f32(0.0, 2.0))
    assert FedBuff.update_kind == "delta"
    assert FedBuff.asynchronous


def stale_deltas() -> list[Update]:
    """(1, 1) fresh from 1 sample and (-1, 3) three versions old from 3 samples; counters +3, +4."""
    return [
        Update({"w": f32(1.0, 1.0), "n": np.array(3)}, 1, staleness=0),
        Update({"w": f32(-1.0, 3.0), "n": np.array(4)}, 3, staleness=3),
    ]


def test_fedbuff_scales_stale_changes_by_the_papers_rule() -> None:
    start = {"w": f32(1.0, 2.0), "n": np.array(5)}
    new, _ = FedBuff(buffer_size=2, server_lr=0.5).aggregate_train(start, stale_deltas(), {})
    # s(0) = 1, s(3) = 1/sqrt(4) = 1/2; plain mean over K = 2: ((1, 1) + (-0.5, 1.5)) / 2
    # = (0.25, 1.25); w + 0.5 * that = (1.125, 2.625).
    np.testing.assert_allclose(new["w"], f32(1.125, 2.625))
    assert new["w"].dtype == np.float32
    # The counter follows the newest update (5 + 4), not the initial model's 5.
    assert int(new["n"]) == 9
    assert new["n"].dtype == start["n"].dtype


def test_fedbuff_without_scaling_keeps_the_sample_weighted_mean() -> None:
    start = {"w": f32(1.0, 2.0), "n": np.array(5)}
    strategy = FedBuff(buffer_size=2, server_lr=0.5, staleness_scaling="none")
    new, _ = strategy.aggregate_train(start, stale_deltas(), {})
    # (1 * (1, 1) + 3 * (-1, 3)) / 4 = (-0.5, 2.5); w + 0.5 * that = (0.75, 3.25).
    np.testing.assert_allclose(new["w"], f32(0.75, 3.25))
    assert int(new["n"]) == 9
    assert build_strategy(StrategySettings(name="fedbuff", staleness_scaling="none")) == FedBuff(
        staleness_scaling="none"
    )


def test_client_sampling_is_seeded_and_sized() -> None:
    sites = list(range(10))
    draw = FedAvg().configure_train
    first = draw(1, sites, np.random.default_rng(5), 3)
    assert first == draw(1, sites, np.random.default_rng(5), 3)
    assert len(first) == 3
    assert first == sorted(set(first))
    assert draw(1, sites, np.random.default_rng(5), 20) == sites


def test_build_strategy_takes_the_settings_it_knows() -> None:
    strategy = build_strategy(StrategySettings(name="fedadam", server_lr=0.5, beta1=0.8))
    assert strategy == FedAdam(server_lr=0.5, beta1=0.8)
    assert build_strategy(StrategySettings(name="fedavgm")) == FedAvgM()  # server_lr unset


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategy.name": "fedadm"}, "strategy.name: unknown value 'fedadm' (did you mean"),
        ({"strategy.name": "fedbuff"}, "max_updates or max_seconds: fedbuff is asynchronous"),
        ({"fraction": "1.5"}, "fraction: must be in (0, 1], got 1.5"),
        ({"fraction": "0.5", "clients_per_round": "2"}, "set at most one of the two"),
        ({"strategy.beta2": "1"}, "strategy.beta2: must be in [0, 1)"),
        ({"strategy.staleness": "linear"}, "strategy.staleness: unknown value 'linear'"),
        ({"strategy.staleness_scaling": "log"}, "strategy.staleness_scaling: unknown value"),
        ({"round_deadline": "0"}, "round_deadline: must be greater than 0"),
        ({"min_clients": "0"}, "min_clients: must be at least 1"),
    ],
)
def test_bad_strategy_settings_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(DEFAULT_EXPERIMENT, overrides)
    assert message in str(caught.value)


def test_strategies_import_with_numpy_alone() -> None:
    # The aggregator's math must not need a deep-learning framework.
    done = subprocess.run(
        [sys.executable, "-c", "import sys, proxyflox.strategies, proxyflox.weights;"
         "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "[]"
