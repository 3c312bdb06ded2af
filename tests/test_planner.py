"""The planner without Parsl: placement, sampling and what each executor is told."""

from __future__ import annotations

from pathlib import Path

import pytest
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

from proxyflox.controller.planner import plan_run
from proxyflox.errors import ConfigError
from proxyflox.settings import SiteOptions, load_experiment
from proxyflox.sites import Deployment
from proxyflox.strategies import FedAvg
from tests.helpers import DEFAULT_EXPERIMENT


def deployment(sites: int = 3, options: dict[str, SiteOptions] | None = None) -> Deployment:
    executors = [ThreadPoolExecutor(label=f"site-{i}") for i in range(sites)]
    config = Config(executors=[*executors, ThreadPoolExecutor(label="aggregator")])
    return Deployment(config, Path("test.py"), options or {})


def test_sites_are_placed_round_robin_and_the_config_is_left_alone() -> None:
    where = deployment(3)
    plan = plan_run(load_experiment(DEFAULT_EXPERIMENT, {"sites": "7"}), where)
    assert plan.placement == ("site-0", "site-1", "site-2") * 2 + ("site-0",)
    assert plan.site_labels == ["site-0", "site-1", "site-2"]
    assert where.parsl_config.run_dir == "runinfo"  # planning changes nothing of the caller's


def test_sampling_is_seeded_sized_and_at_least_min_clients() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"sites": "10", "clients_per_round": "3"})
    plan = plan_run(config, deployment())
    rounds = [plan.sample(FedAvg(), r) for r in range(1, 6)]
    assert all(len(sites) == 3 and sites == sorted(set(sites)) for sites in rounds)
    assert rounds == [plan.sample(FedAvg(), r) for r in range(1, 6)]  # same seed, same draws
    assert len({tuple(sites) for sites in rounds}) > 1
    fraction = plan_run(
        load_experiment(DEFAULT_EXPERIMENT, {"sites": "10", "fraction": "0.1", "min_clients": "4"}),
        deployment(),
    )
    assert len(fraction.sample(FedAvg(), 1)) == 4


def test_each_executor_is_told_its_own_options_over_the_experiments() -> None:
    where = deployment(2, {"site-1": SiteOptions(batch_size=8, device="cuda:1")})
    config = load_experiment(
        DEFAULT_EXPERIMENT, {"site_options.site-0.local_epochs": "3", "data_dir": "/data"}
    )
    plan = plan_run(config, where)
    assert (plan.setups["site-0"].local_epochs, plan.setups["site-0"].batch_size) == (3, 32)
    assert (plan.setups["site-1"].batch_size, plan.setups["site-1"].device) == (8, "cuda:1")
    assert plan.setups["aggregator"].data.data_dir == "/data"
    assert plan.setup_of(1) is plan.setups["site-1"]


def test_settings_that_do_not_fit_the_config_are_refused() -> None:
    with pytest.raises(ConfigError, match="min_clients: 9 is more than the 4 sites"):
        plan_run(load_experiment(DEFAULT_EXPERIMENT, {"min_clients": "9"}), deployment())
    with pytest.raises(ConfigError, match="aggregator: no executor labelled 'agg'"):
        plan_run(load_experiment(DEFAULT_EXPERIMENT, {"aggregator": "agg"}), deployment())
