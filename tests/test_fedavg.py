"""FedAvg aggregation against hand-computed weighted means."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from proxyflox.strategies import FedAvg


def test_weighted_mean_matches_hand_computation() -> None:
    a = {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([[0.0]], dtype=np.float32)}
    b = {"w": np.array([3.0, 6.0], dtype=np.float32), "b": np.array([[4.0]], dtype=np.float32)}
    mean = FedAvg().aggregate([(a, 1), (b, 3)])
    # w: (1*1 + 3*3)/4 = 2.5, (2*1 + 6*3)/4 = 5.0 ; b: (0*1 + 4*3)/4 = 3.0
    np.testing.assert_array_equal(mean["w"], np.array([2.5, 5.0], dtype=np.float32))
    np.testing.assert_array_equal(mean["b"], np.array([[3.0]], dtype=np.float32))
    assert mean["w"].dtype == np.float32


def test_one_update_comes_back_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    update = {"w": rng.standard_normal(10_000).astype(np.float32)}
    mean = FedAvg().aggregate([(update, 1437)])
    assert mean["w"].tobytes() == update["w"].tobytes()


def test_integer_buffers_stay_integers() -> None:
    mean = FedAvg().aggregate(
        [({"n": np.array(10, dtype=np.int64)}, 1), ({"n": np.array(13, dtype=np.int64)}, 1)]
    )
    assert mean["n"].dtype == np.int64
    assert int(mean["n"]) == 12  # 11.5 rounds to even


def test_each_update_is_released_before_the_next_is_fetched() -> None:
    previous: list[weakref.ref[np.ndarray]] = []

    def updates() -> Iterator[tuple[dict[str, np.ndarray], int]]:
        for i in range(5):
            assert all(ref() is None for ref in previous), "an earlier update is still alive"
            array = np.full(3, float(i), dtype=np.float32)
            previous.append(weakref.ref(array))
            yield {"w": array}, 1
            del array

    mean = FedAvg().aggregate(updates())
    np.testing.assert_array_equal(mean["w"], np.full(3, 2.0, dtype=np.float32))
    assert len(previous) == 5


def test_mismatched_updates_and_empty_rounds_are_errors() -> None:
    with pytest.raises(ValueError, match="disagree on parameter names"):
        FedAvg().aggregate([({"a": np.zeros(1)}, 1), ({"b": np.zeros(1)}, 1)])
    with pytest.raises(ValueError, match="no updates"):
        FedAvg().aggregate([])
