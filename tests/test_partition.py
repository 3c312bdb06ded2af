"""Partitioners: every sample on exactly one site, seeded, no empty site."""

from __future__ import annotations

import numpy as np
import pytest

from proxyflox.config import ConfigError
from proxyflox.data import load_dataset
from proxyflox.data.partition import partition

LABELS = load_dataset("digits", None, 0, 0.2).train.y


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("num_sites", [1, 4, 13])
def test_partition_covers_every_sample_exactly_once(scheme: str, num_sites: int) -> None:
    parts = partition(LABELS, num_sites, scheme, seed=3, alpha=0.5)
    assert len(parts) == num_sites
    combined = np.concatenate(parts)
    assert len(combined) == len(LABELS)
    assert np.array_equal(np.sort(combined), np.arange(len(LABELS)))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(p) for p in partition(LABELS, 4, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_same_seed_same_partition_other_seed_other_partition(scheme: str) -> None:
    first = partition(LABELS, 4, scheme, seed=7, alpha=0.5)
    again = partition(LABELS, 4, scheme, seed=7, alpha=0.5)
    other = partition(LABELS, 4, scheme, seed=8, alpha=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_skews_labels_more_as_alpha_shrinks() -> None:
    def mean_label_share_of_top_class(alpha: float) -> float:
        shares = []
        for part in partition(LABELS, 8, "dirichlet", seed=1, alpha=alpha):
            counts = np.bincount(LABELS[part], minlength=10)
            shares.append(counts.max() / counts.sum())
        return float(np.mean(shares))

    assert mean_label_share_of_top_class(0.1) > mean_label_share_of_top_class(100.0) + 0.3


def test_a_site_without_samples_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"leaves \d+ of 200 site\(s\) .* without training samples"):
        partition(LABELS, 200, "dirichlet", seed=0, alpha=0.01)


def test_more_sites_than_samples_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="5 sites but only 3 training samples"):
        partition(np.array([0, 1, 2]), 5, "iid", seed=0)
