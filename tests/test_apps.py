"""The app bodies as plain functions, without Parsl, on a real file store."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from proxystore.proxy import Proxy, is_resolved

from proxyflox.apps import aggregate_updates, evaluate_global, init_global_model, train_site
from proxyflox.settings import load_experiment
from proxyflox.stores import open_store, put_weights, resolve_weights
from proxyflox.strategies import FedAvg
from tests.helpers import DEFAULT_EXPERIMENT


@pytest.fixture
def store_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = open_store(load_experiment(DEFAULT_EXPERIMENT).store, tmp_path, name="apps-test")
    yield store.config()
    store.close()


def test_a_train_result_is_a_small_dict_whose_weights_are_a_proxy(store_config) -> None:  # type: ignore[no-untyped-def]
    config = load_experiment(DEFAULT_EXPERIMENT)
    global_model = init_global_model(config, store_config)
    result = train_site(config, 0, 4, 1, global_model, store_config)
    assert isinstance(result["weights"], Proxy)
    assert result["num_samples"] in (359, 360)  # 1437 training samples over 4 sites
    assert result["train_seconds"] > 0 and result["resolve_seconds"] > 0
    # What Parsl carries back to the controller is a reference, not 0.6 MB of weights.
    assert global_model["model_bytes"] > 500_000
    assert len(pickle.dumps(result)) < 4096
    assert not is_resolved(pickle.loads(pickle.dumps(result))["weights"])


def test_aggregate_app_resolves_updates_and_computes_the_weighted_mean(store_config) -> None:  # type: ignore[no-untyped-def]
    updates = [
        {"w": np.array([1.0, 2.0], dtype=np.float32)},
        {"w": np.array([4.0, 8.0], dtype=np.float32)},
    ]
    # As the aggregator receives them from other processes: proxies not yet resolved.
    results = pickle.loads(
        pickle.dumps(
            [
                {"weights": put_weights(update, store_config)[0], "num_samples": n}
                for update, n in zip(updates, (3, 1), strict=True)
            ]
        )
    )
    new_global = aggregate_updates(FedAvg(), {}, *results, store_config=store_config)
    weights, _ = resolve_weights(new_global["weights"])
    np.testing.assert_array_equal(weights["w"], np.array([1.75, 3.5], dtype=np.float32))
    assert new_global["num_updates"] == 2
    # Updates are read through the proxies' factories: no proxy keeps a copy of its update.
    assert not any(is_resolved(r["weights"]) for r in results)


def test_direct_transfer_passes_the_arrays_themselves() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"transfer": "direct"})
    global_model = init_global_model(config, None)
    assert isinstance(global_model["weights"], dict)
    result = train_site(config, 1, 4, 1, global_model, None)
    new_global = aggregate_updates(FedAvg(), global_model, result, store_config=None)
    # One update with any sample count averages back to itself.
    for name, array in result["weights"].items():
        assert new_global["weights"][name].tobytes() == array.tobytes()
    metrics = evaluate_global(config, new_global)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
