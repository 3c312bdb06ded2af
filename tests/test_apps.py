"""The app bodies as plain functions, without Parsl, on a real file store."""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from proxystore.proxy import Proxy, is_resolved
from proxystore.store.config import StoreConfig

from proxyflox import apps, data
from proxyflox.apps import (
    aggregate_updates,
    evaluate_global,
    init_global_model,
    prime_worker,
    train_site,
)
from proxyflox.controller.planner import plan_run
from proxyflox.data import dataset_info
from proxyflox.messages import AggregateTask, InitTask, Instructions, UpdateRef
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from proxyflox.stores import key_of, open_app_store, open_store, put_weights, resolve_weights
from proxyflox.strategies import FedAvg
from tests.helpers import DEFAULT_EXPERIMENT, experiment_setup


@pytest.fixture
def store_config(tmp_path: Path) -> Iterator[StoreConfig]:
    store = open_store(load_experiment(DEFAULT_EXPERIMENT).store, tmp_path, name="apps-test")
    yield store.config()
    store.close()


def test_a_train_result_is_a_small_record_whose_update_is_a_proxy(
    store_config: StoreConfig,
) -> None:
    setup = experiment_setup(load_experiment(DEFAULT_EXPERIMENT))
    global_model = init_global_model(InitTask(setup, store_config))
    result = train_site(setup, 0, 1, global_model, Instructions())
    assert isinstance(result.update, Proxy)
    assert result.num_samples in (359, 360)  # 1437 training samples over 4 sites
    assert result.train_seconds > 0
    assert result.resolve_seconds > 0
    # What Parsl carries back to the controller is a reference, not 0.6 MB of weights.
    weights, _ = resolve_weights(global_model.weights)
    assert sum(array.nbytes for array in weights.values()) > 500_000
    assert len(pickle.dumps(result)) < 4096
    assert not is_resolved(pickle.loads(pickle.dumps(result)).update)


def test_aggregate_app_resolves_updates_and_computes_the_weighted_mean(
    store_config: StoreConfig,
) -> None:
    updates = [
        {"w": np.array([1.0, 2.0], dtype=np.float32)},
        {"w": np.array([4.0, 8.0], dtype=np.float32)},
    ]
    store = open_app_store(store_config)
    # As the aggregator receives them from other processes: keys of objects in the store.
    refs = pickle.loads(
        pickle.dumps(
            tuple(
                UpdateRef(key_of(put_weights(update, store)[0]), n)
                for update, n in zip(updates, (3, 1), strict=True)
            )
        )
    )
    task = AggregateTask(FedAvg(), None, dataset_info("digits", None), None, refs, store_config)
    new_global = aggregate_updates(task)
    weights, _ = resolve_weights(new_global.model.weights)
    np.testing.assert_array_equal(weights["w"], np.array([1.75, 3.5], dtype=np.float32))
    assert new_global.num_updates == 2


def test_direct_transfer_passes_the_arrays_themselves() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"transfer": "direct"})
    setup = experiment_setup(config)
    global_model = init_global_model(InitTask(setup, None))
    assert isinstance(global_model.weights, dict)
    result = train_site(setup, 1, 1, global_model, Instructions())
    task = AggregateTask(
        FedAvg(),
        global_model.weights,
        global_model.dataset,
        None,
        (UpdateRef(result.update, result.num_samples),),
        None,
    )
    new_global = aggregate_updates(task)
    # One update with any sample count averages back to itself.
    for name, array in result.update.items():
        assert new_global.model.weights[name].tobytes() == array.tobytes()
    metrics = evaluate_global(setup, new_global.model)
    assert 0.0 <= metrics.accuracy <= 1.0
    assert metrics.loss > 0


def test_priming_loads_exactly_the_data_its_executors_apps_then_use() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"sites": "8", "transfer": "direct"})
    plan = plan_run(config, load_deployment("local.py"))
    setup, aggregator = plan.setups["site-1"], plan.setups[plan.aggregator]
    global_model = pickle.loads(pickle.dumps(init_global_model(InitTask(aggregator, None))))
    apps._site_data.cache_clear()
    data.load_split.cache_clear()

    primed = prime_worker(setup, (1, 5))  # the two sites that local.py places on site-1
    assert primed.pid == os.getpid()
    assert primed.error == ""
    assert primed.loaded == ("site 1: 180 samples", "site 5: 179 samples")  # 1437 over 8
    assert len(pickle.dumps(primed)) < 512  # names and counts, no data
    assert apps._site_data.cache_info().currsize == 2
    for site in (1, 5):  # training finds both in this process's cache: nothing loads again
        assert train_site(setup, site, 1, global_model, Instructions()).num_samples in (179, 180)
    assert apps._site_data.cache_info()[:2] == (2, 2)  # hits, misses

    primed = prime_worker(aggregator, ())  # the aggregator: the global test split
    assert primed.loaded == ("test: 360 samples",)
    assert primed.error == ""
    test_split_loads = data.load_split.cache_info().misses
    evaluate_global(aggregator, global_model)
    assert data.load_split.cache_info().misses == test_split_loads


def test_priming_data_that_cannot_load_says_why_and_raises_nothing(tmp_path: Path) -> None:
    setup = experiment_setup(load_experiment(DEFAULT_EXPERIMENT))
    missing = dataclasses.replace(setup.data, dataset="folder", data_dir=str(tmp_path / "none"))
    primed = prime_worker(dataclasses.replace(setup, data=missing), (0, 4))
    assert primed.loaded == ()
    assert "does not exist" in primed.error
    assert "\n" not in primed.error
