"""Every update is checked at the aggregator before it is used; a bad one fails its site only.

The app body on a real file store (each kind of bad update, unreadable and missing objects, too
few good ones), then real HTEX runs in which one site sends a bad update or leaves a crafted
pickle under its update's key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from proxystore.store.base import Store
from proxystore.store.utils import get_key

from proxyflox.apps import aggregate_updates
from proxyflox.controller import AppBodies, RunResult, run_federation
from proxyflox.data import dataset_info
from proxyflox.errors import TooFewUpdatesError
from proxyflox.messages import AggregateTask, UpdateRef
from proxyflox.results import create_run_dir, read_rounds
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from proxyflox.stores import key_of, open_store, put_weights, resolve_weights
from proxyflox.strategies import FedAvg
from proxyflox.weights import Weights, layout_of
from tests import misbehaving
from tests.helpers import DEFAULT_EXPERIMENT, ROOT
from tests.test_round_control import read_csv


def weights(value: float, **changes: np.ndarray | None) -> Weights:
    base: dict[str, np.ndarray | None] = {
        "w": np.full((4, 3), value, np.float32),
        "b": np.full(3, value, np.float32),
        "n": np.array(int(value), np.int64),
    }
    return {name: array for name, array in (base | changes).items() if array is not None}


LAYOUT = layout_of(weights(0))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store[Any]]:
    opened = open_store(load_experiment(DEFAULT_EXPERIMENT).store, tmp_path, "checks-test")
    yield opened
    opened.close()


def aggregate(store: Store[Any], updates: list[tuple[Any, int]], **task: Any) -> Any:
    """The aggregate app on these updates (weights to put, or a key as it is), one per site."""
    refs = tuple(
        UpdateRef(
            key_of(put_weights(update, store)[0]) if isinstance(update, dict) else update,
            samples,
            site=site,
        )
        for site, (update, samples) in enumerate(updates)
    )
    info = dataset_info("digits", None)
    return aggregate_updates(
        AggregateTask(FedAvg(), None, info, None, refs, store.config(), layout=LAYOUT, **task)
    )


def nan_at(shape: tuple[int, ...], count: int, value: float) -> np.ndarray:
    array = np.ones(shape, np.float32)
    array.reshape(-1)[:count] = value
    return array


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (weights(9, w=np.zeros((4, 2), np.float32)), "'w' has shape (4, 2), the model's is (4, 3)"),
        (
            weights(9, w=np.zeros((4, 3), np.float64)),
            "'w' has dtype float64, the model's is float32",
        ),
        (weights(9, n=np.array(9, np.int32)), "'n' has dtype int32, the model's is int64"),
        (weights(9, b=nan_at((3,), 1, np.nan)), "'b' holds 1 NaN value"),
        (weights(9, w=nan_at((4, 3), 2, -np.inf)), "'w' holds 2 infinite values"),
        (weights(9, b=None), "'b' is missing"),
        (weights(9, extra=np.zeros(2, np.float32)), "'extra' is not in the model"),
    ],
)
def test_a_bad_update_fails_its_site_and_the_model_is_the_mean_of_the_others(
    store: Store[Any], bad: Weights, reason: str
) -> None:
    result = aggregate(store, [(weights(1), 1), (bad, 5), (weights(4), 3)])
    assert result.rejected == ((1, 1, f"update rejected: {reason}"),)
    assert result.num_updates == 2
    new, _ = resolve_weights(result.model.weights)
    np.testing.assert_array_equal(new["w"], np.full((4, 3), 3.25, np.float32))  # (1 + 12) / 4
    assert int(new["n"]) == 3  # 3.25 rounded


def test_a_site_without_samples_is_skipped_with_its_reason_and_nothing_is_read(
    store: Store[Any],
) -> None:
    result = aggregate(store, [(weights(2), 3), (None, 0), ("not a key", -1)])
    assert result.rejected == (
        (1, 1, "0 training samples, skipped"),
        (2, 2, "update rejected: it reports -1 training samples"),
    )
    new, _ = resolve_weights(result.model.weights)
    assert new["w"].tobytes() == weights(2)["w"].tobytes()  # one update: bit for bit


def test_unreadable_and_missing_objects_fail_their_sites(store: Store[Any], tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    crafted = get_key(put_weights(weights(5), store)[0])
    store.connector.set(crafted, misbehaving.crafted_pickle(str(marker)))
    missing = get_key(put_weights(weights(6), store)[0])
    store.evict(missing)
    result = aggregate(store, [(crafted, 2), (weights(3), 2), (missing, 2)])
    (_, site0, why0), (_, site2, why2) = result.rejected
    assert (site0, site2) == (0, 2)
    assert why0.startswith("update unreadable: not a ProxyFlox weights object (")
    assert "b'PK\\n" in why0
    assert why2 == "update missing from the store (evicted, or never written)"
    assert not marker.exists()


def test_too_few_good_updates_stop_the_aggregation_before_anything_is_written(
    store: Store[Any], tmp_path: Path
) -> None:
    updates = [(weights(1), 1), (weights(1, b=nan_at((3,), 3, np.nan)), 1)]
    with pytest.raises(TooFewUpdatesError, match="1 of 2 updates passed") as error:
        aggregate(store, updates, min_updates=2, checkpoint_dir=str(tmp_path / "checkpoint"))
    assert error.value.rejected == ((1, 1, "update rejected: 'b' holds 3 NaN values"),)
    assert not (tmp_path / "checkpoint").exists()
    assert sum(1 for f in (tmp_path / "store").iterdir() if not f.name.endswith(".ready")) == 2


# -- real runs on local_htex.py ------------------------------------------------------------------


def run_htex(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train: Any, **overrides: Any
) -> RunResult:
    """Two rounds of the default experiment on real HTEX workers, with ``train`` as the body."""
    # The workers import the misbehaving bodies from ``tests``, by name.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    config = load_experiment(
        DEFAULT_EXPERIMENT, {"rounds": 2, "runs_dir": str(tmp_path / "runs")} | overrides
    )
    run_dir = create_run_dir(config.runs_dir, config.name)
    return run_federation(
        config, load_deployment("local_htex.py"), run_dir, progress=lambda line: None,
        bodies=AppBodies(train=train),
    )  # fmt: skip


@pytest.mark.slow
def test_a_run_in_which_one_site_sends_a_wrong_shape_goes_on_with_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = tmp_path / "updates"
    kept.mkdir()
    monkeypatch.setenv(misbehaving.UPDATES_ENV, str(kept))
    result = run_htex(tmp_path, monkeypatch, misbehaving.train_sending_a_wrong_shape)
    rows = read_rounds(result.run_dir)
    assert [row["failed_site_ids"] for row in rows] == ["1", "1"]
    assert [row["site_ids"] for row in rows] == ["0 2 3", "0 2 3"]
    assert "site 1: update rejected: '" in rows[0]["failures"]
    assert "has shape (" in rows[0]["failures"]
    assert ", the model's is (" in rows[0]["failures"]
    # The final model is the sample-weighted mean of the other sites' round-2 updates.
    samples = {
        int(row["site"]): int(row["num_samples"])
        for row in read_csv(result.run_dir / "sites.csv")
        if row["round"] == "2"
    }
    assert sorted(samples) == [0, 2, 3]
    updates = {site: np.load(kept / f"round-2-site-{site}.npz") for site in samples}
    model = torch.load(result.run_dir / "model.pt")
    for name, array in model.items():
        mean = sum(samples[s] * updates[s][name].astype(np.float64) for s in samples)
        mean /= sum(samples.values())
        expected = np.rint(mean) if array.dtype == torch.int64 else mean
        np.testing.assert_allclose(array.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_a_pickle_left_under_an_updates_key_runs_nothing_and_fails_that_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker"
    monkeypatch.setenv(misbehaving.MARKER_ENV, str(marker))
    result = run_htex(tmp_path, monkeypatch, misbehaving.train_leaving_a_pickle)
    rows = read_rounds(result.run_dir)
    assert len(rows) == 2
    assert [row["failed_site_ids"] for row in rows] == ["1", "1"]
    assert rows[0]["failures"].startswith(
        "site 1: update unreadable: not a ProxyFlox weights object ("
    )
    assert not marker.exists()
    assert float(rows[-1]["accuracy"]) > 0.5
