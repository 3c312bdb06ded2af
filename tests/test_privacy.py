"""DP-FedAvg: clipping, noise and the adaptive clip norm against hand math; the accountant
against the library's own; a real run whose epsilon grows and resumes bit for bit."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from proxyflox.apps import aggregate_updates, init_global_model, train_site
from proxyflox.errors import ConfigError
from proxyflox.messages import AggregateTask, InitTask, Instructions, UpdateRef
from proxyflox.privacy import adjusted_noise_multiplier, clip_change, epsilon, l2_norm
from proxyflox.results import read_rounds
from proxyflox.settings import load_experiment
from proxyflox.strategies import DPFedAvg, Update, build_strategy
from tests.helpers import DEFAULT_EXPERIMENT, ROOT, experiment_setup, only_run_dir, run_cli
from tests.test_resume import comparable, kill_after_round, same_results


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_a_change_is_clipped_to_the_norm_of_all_its_float_arrays_together() -> None:
    change = {"a": f32(3.0), "b": f32(4.0), "steps": np.array(7, dtype=np.int64)}
    clipped, within = clip_change(change, 2.5)  # norm 5 -> scale 0.5
    assert not within
    np.testing.assert_allclose(clipped["a"], [1.5])
    np.testing.assert_allclose(clipped["b"], [2.0])
    assert clipped["a"].dtype == np.float32
    assert clipped["steps"] == 0  # an integer change counts the site's batches: not sent
    assert l2_norm(clipped) == pytest.approx(2.5)

    small = {"w": f32(0.375, 0.5)}  # norm 0.625 exactly
    kept, within = clip_change(small, 0.625)  # at the bound: within, untouched
    assert within
    np.testing.assert_array_equal(kept["w"], f32(0.375, 0.5))


def test_aggregate_is_the_uniform_mean_of_clipped_changes_added_to_the_model() -> None:
    strategy = DPFedAvg(noise_multiplier=0.0, clip_norm=1.0)
    global_weights = {"w": f32(1.0, 2.0), "steps": np.array(5, dtype=np.int64)}
    updates = [
        # norm 5: clipped to (0.6, 0.8); 1 sample
        Update({"w": f32(3.0, 4.0), "steps": np.array(0, dtype=np.int64)}, 1, unclipped=False),
        # norm 0.5: as it is; 3 samples, which must not weigh more
        Update({"w": f32(0.3, 0.4), "steps": np.array(0, dtype=np.int64)}, 3, unclipped=True),
    ]
    new, state = strategy.aggregate_train(global_weights, updates, strategy.initial_state())
    # (1, 2) + ((0.6, 0.8) + (0.3, 0.4)) / 2 = (1.45, 2.6)
    np.testing.assert_allclose(new["w"], [1.45, 2.6], rtol=1e-6)
    assert new["w"].dtype == np.float32
    assert new["steps"] == 5  # integer buffers keep the global model's own
    assert float(state["clip_norm"]) == 1.0  # fixed clipping
    assert int(state["rounds"]) == 1


def test_an_update_that_was_not_clipped_on_its_site_is_refused() -> None:
    strategy = DPFedAvg(noise_multiplier=0.0)
    with pytest.raises(ValueError, match="not clipped on its site"):
        strategy.aggregate_train({"w": f32(0.0)}, [Update({"w": f32(1.0)}, 1)], {})


def noise_of_one_round(
    strategy: DPFedAvg, size: int, sites: int, rounds_done: int = 0
) -> np.ndarray:
    """What the aggregate adds to a zero model from ``sites`` zero changes: the noise alone."""
    state = strategy.initial_state() | {"rounds": np.int64(rounds_done)}
    updates = [Update({"w": np.zeros(size, np.float32)}, 1, unclipped=True) for _ in range(sites)]
    new, _ = strategy.aggregate_train({"w": np.zeros(size, np.float32)}, updates, state)
    return new["w"].astype(np.float64)


def test_noise_on_the_mean_has_stddev_z_c_over_m_and_repeats_from_seed_and_round() -> None:
    strategy = DPFedAvg(noise_multiplier=2.0, clip_norm=0.5, seed=7)
    noise = noise_of_one_round(strategy, 1_000_000, sites=4)
    expected = 2.0 * 0.5 / 4  # z C on the sum, divided by the 4 sites
    # 1e6 draws: the sample stddev is within ~0.07% (one sigma) of the true one.
    assert noise.std() == pytest.approx(expected, rel=0.005)
    assert abs(noise.mean()) < 5 * expected / 1000
    again = noise_of_one_round(strategy, 1_000_000, sites=4)
    assert np.array_equal(noise, again)  # (seed, round) fixes every draw
    next_round = noise_of_one_round(strategy, 1_000_000, sites=4, rounds_done=1)
    assert not np.array_equal(noise, next_round)


def test_adaptive_clipping_noises_the_update_with_z_delta() -> None:
    z, count_stddev = 1.0, 1.0
    z_delta = (1.0 - 1.0 / 4.0) ** -0.5  # (z^-2 - (2 sigma_b)^-2)^-1/2
    assert adjusted_noise_multiplier(z, count_stddev) == pytest.approx(z_delta)
    strategy = DPFedAvg(
        noise_multiplier=z, clip_norm=0.2, clipping="adaptive", clip_count_stddev=count_stddev
    )
    noise = noise_of_one_round(strategy, 1_000_000, sites=5)
    assert noise.std() == pytest.approx(z_delta * 0.2 / 5, rel=0.005)


def test_adaptive_clip_norm_moves_geometrically_towards_the_target_quantile() -> None:
    strategy = DPFedAvg(
        noise_multiplier=0.0,
        clip_norm=1.0,
        clipping="adaptive",
        target_quantile=0.5,
        clip_learning_rate=0.2,
        clip_count_stddev=0.0,
    )
    bits = [True, True, True, False]  # 3 of 4 within C: b = 0.75
    updates = [Update({"w": f32(0.1)}, 1, unclipped=bit) for bit in bits]
    _, state = strategy.aggregate_train({"w": f32(0.0)}, updates, strategy.initial_state())
    # C exp(-eta (b - gamma)) = exp(-0.2 * 0.25)
    assert float(state["clip_norm"]) == pytest.approx(math.exp(-0.05))


def test_the_count_of_unclipped_sites_gets_noise_of_stddev_sigma_b() -> None:
    strategy = DPFedAvg(
        noise_multiplier=0.0,
        clip_norm=1.0,
        clipping="adaptive",
        clip_learning_rate=0.2,
        clip_count_stddev=2.0,
    )
    steps = []
    for rounds_done in range(2000):
        updates = [Update({"w": f32(0.1)}, 1, unclipped=True) for _ in range(4)]
        state = strategy.initial_state() | {"rounds": np.int64(rounds_done)}
        _, new = strategy.aggregate_train({"w": f32(0.0)}, updates, state)
        steps.append(math.log(float(new["clip_norm"])))
    # log C' = -eta ((4 + n) / 4 - 0.5), n ~ N(0, sigma_b^2): mean -0.1, stddev eta sigma_b / 4.
    assert np.mean(steps) == pytest.approx(-0.1, abs=0.005)
    assert np.std(steps) == pytest.approx(0.2 * 2.0 / 4, rel=0.05)


def test_for_run_resolves_the_count_noise_and_sampling_rate_and_refuses_what_cannot_work() -> None:
    strategy = DPFedAvg(noise_multiplier=1.0, clipping="adaptive")
    resolved = strategy.for_run(seed=3, num_sites=100, clients_per_round=40)
    assert resolved.clip_count_stddev == pytest.approx(2.0)  # expected clients / 20
    assert resolved.sampling_rate == pytest.approx(0.4)
    assert resolved.seed == 3
    with pytest.raises(ConfigError, match=r"clip_count_stddev: 2 x clip_count_stddev = 0\.4"):
        strategy.for_run(seed=0, num_sites=4, clients_per_round=4)  # sigma_b = 0.2
    with pytest.raises(ConfigError, match=r"strategy\.delta: 0\.3 is not below 1/sites"):
        DPFedAvg(delta=0.3).for_run(seed=0, num_sites=4, clients_per_round=4)


def test_a_missing_accountant_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'proxyflox\[dp\]'"):
        DPFedAvg().for_run(seed=0, num_sites=4, clients_per_round=4)


@pytest.mark.parametrize(
    ("q", "z", "rounds"), [(1.0, 1.0, 10), (0.1, 1.0, 100), (0.4, 0.5, 30), (0.02, 2.0, 1000)]
)
def test_epsilon_is_the_librarys_own_for_poisson_sampled_gaussian_rounds(
    q: float, z: float, rounds: int
) -> None:
    accountant = RdpAccountant()
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    assert epsilon(z, q, rounds, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)


def test_epsilon_without_sampling_is_the_gaussian_mechanisms_by_hand() -> None:
    # All sites each round: RDP of T Gaussian rounds is T alpha / (2 z^2); the accountant turns
    # it into epsilon = min over alpha of rdp + log((alpha-1)/alpha) - (log delta + log alpha)
    # / (alpha - 1) (Balle et al. 2020), over its default orders.
    orders = np.array(RdpAccountant().orders)
    z, rounds, delta = 1.0, 10, 1e-5
    rdp = rounds * orders / (2 * z**2)
    by_hand = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    assert epsilon(z, 1.0, rounds, delta) == pytest.approx(by_hand.min(), rel=1e-6)
    assert epsilon(z, 1.0, rounds, delta) == pytest.approx(19.05, abs=0.01)
    assert epsilon(0.0, 1.0, 1, delta) == math.inf  # no noise, no privacy


def test_the_accountant_prints_nothing_and_leaves_logging_unconfigured() -> None:
    # With q < 1 the accountant drops fractional orders whose series do not converge, warning
    # through absl, whose first message would also install a root handler (logging.basicConfig)
    # that prints every library's DEBUG records from then on.
    probe = (
        "import logging; from proxyflox.privacy import epsilon; "
        "print(epsilon(1.0, 0.37, 5, 1e-5)); assert not logging.getLogger().handlers"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert float(done.stdout) > 0


def test_a_site_clips_its_change_before_it_leaves_and_the_aggregate_app_passes_its_bit() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"transfer": "direct"})
    setup = experiment_setup(config)
    global_model = init_global_model(InitTask(setup, None))
    told = Instructions(update_kind="delta", clip_norm=0.05)
    result = train_site(setup, 0, 1, global_model, told)
    assert result.unclipped is False  # one epoch moves the model by ~0.7
    assert l2_norm(result.update) == pytest.approx(0.05, rel=1e-6)
    loose = train_site(setup, 0, 1, global_model, Instructions(update_kind="delta", clip_norm=1e3))
    assert loose.unclipped is True
    raw_norm = l2_norm(loose.update)

    strategy = DPFedAvg(noise_multiplier=0.0, clip_norm=0.05)
    task = AggregateTask(
        strategy,
        global_model.weights,
        global_model.dataset,
        None,
        (UpdateRef(result.update, result.num_samples, change=True, unclipped=result.unclipped),),
        None,
    )
    aggregate = aggregate_updates(task)
    assert aggregate.model.state_scalars == {"clip_norm": 0.05, "rounds": 1.0}
    moved = {
        name: aggregate.model.weights[name] - global_model.weights[name]
        for name in global_model.weights
    }
    assert l2_norm(moved) == pytest.approx(0.05, rel=1e-4)  # one clipped change, no noise
    assert raw_norm > 0.05


def test_a_private_run_reports_growing_epsilon_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    private = ["--rounds", "4", "--strategy.name", "dpfedavg", "--strategy.clipping", "adaptive",
               "--strategy.noise_multiplier", "0.5", "--strategy.clip_count_stddev", "1.0",
               "--strategy.clip_norm", "0.3"]  # fmt: skip
    straight = run_cli(*private, "--runs_dir", str(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    straight_dir = only_run_dir(tmp_path / "straight")
    rows = read_rounds(straight_dir)
    epsilons = [float(row["epsilon"]) for row in rows]
    assert epsilons == sorted(epsilons)
    assert epsilons[0] > 0
    # All 4 sites every round: q = 1; the written figure has 6 significant digits.
    assert epsilons[-1] == pytest.approx(epsilon(0.5, 1.0, 4, 1e-5), rel=1e-5)
    clip_norms = [float(row["clip_norm"]) for row in rows]
    assert clip_norms[0] == 0.3
    assert len(set(clip_norms)) == 4  # adapted every round

    stopped_dir = kill_after_round([*private, "--runs_dir", str(tmp_path / "stopped")], tmp_path, 2)
    resumed = run_cli("--resume", str(stopped_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "round   4/4" in resumed.stdout
    assert "round   1/4" not in resumed.stdout
    same_results(stopped_dir, straight_dir)  # noise, clip norms and epsilon included
    assert comparable(stopped_dir) == comparable(straight_dir)


def test_settings_reach_the_strategy() -> None:
    config = load_experiment(
        DEFAULT_EXPERIMENT,
        {"strategy.name": "dpfedavg", "strategy.noise_multiplier": "0.7",
         "strategy.clipping": "adaptive", "strategy.delta": "1e-6"},
    )  # fmt: skip
    strategy = build_strategy(config.strategy)
    assert isinstance(strategy, DPFedAvg)
    assert (strategy.noise_multiplier, strategy.clipping, strategy.delta) == (0.7, "adaptive", 1e-6)
    assert strategy.server_lr == 1.0
