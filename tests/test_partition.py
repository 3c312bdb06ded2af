"""Partitioners: every sample on exactly one site, seeded, no empty site."""

from __future__ import annotations

import numpy as np
import pytest

from proxyflox.data import load_dataset
from proxyflox.data.partition import partition
from proxyflox.errors import ConfigError

LABELS = load_dataset("digits", None, 0, 0.2).train.y


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("num_sites", [1, 4, 13])
def test_partition_covers_every_sample_exactly_once(scheme: str, num_sites: int) -> None:
    classes_per_site = 10 if num_sites == 1 else 3
    parts = partition(
        LABELS, num_sites, scheme, seed=3, alpha=0.5, classes_per_site=classes_per_site
    )
    assert len(parts) == num_sites
    combined = np.concatenate(parts)
    assert len(combined) == len(LABELS)
    assert np.array_equal(np.sort(combined), np.arange(len(LABELS)))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(p) for p in partition(LABELS, 4, "iid", seed=0)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_same_seed_same_partition_other_seed_other_partition(scheme: str) -> None:
    first = partition(LABELS, 4, scheme, seed=7, alpha=0.5, classes_per_site=3)
    again = partition(LABELS, 4, scheme, seed=7, alpha=0.5, classes_per_site=3)
    other = partition(LABELS, 4, scheme, seed=8, alpha=0.5, classes_per_site=3)
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
    with pytest.raises(
        ConfigError, match=r"leaves \d+ of 200 site\(s\) .* without training samples"
    ):
        partition(LABELS, 200, "dirichlet", seed=0, alpha=0.01)


def test_more_sites_than_samples_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="5 sites but only 3 training samples"):
        partition(np.array([0, 1, 2]), 5, "iid", seed=0)


@pytest.mark.parametrize("classes_per_site", [1, 2, 5])
def test_shards_give_each_site_its_classes_and_every_class_a_site(classes_per_site: int) -> None:
    parts = partition(LABELS, 10, "shards", seed=2, classes_per_site=classes_per_site)
    held = [set(np.unique(LABELS[part]).tolist()) for part in parts]
    assert all(len(classes) == classes_per_site for classes in held)
    assert set().union(*held) == set(range(10))
    # A class's samples are split evenly among the sites holding it.
    for label in range(10):
        counts = [int((LABELS[part] == label).sum()) for part in parts]
        holding = [count for count in counts if count]
        assert max(holding) - min(holding) <= 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_samples_per_site_caps_without_overlap(scheme: str) -> None:
    settings = {"seed": 5, "alpha": 1.0, "classes_per_site": 3}
    full = partition(LABELS, 4, scheme, **settings)  # type: ignore[arg-type]
    capped = partition(LABELS, 4, scheme, samples_per_site=40, **settings)  # type: ignore[arg-type]
    again = partition(LABELS, 4, scheme, samples_per_site=40, **settings)  # type: ignore[arg-type]
    for whole, part, same in zip(full, capped, again, strict=True):
        assert len(part) == min(40, len(whole))
        assert set(part) <= set(whole)  # a subset of what the site would hold uncapped
        assert np.array_equal(part, same)
    if scheme == "dirichlet":
        # A random subset, not the first samples of a part ordered by class.
        assert any(len(np.unique(LABELS[part])) > 1 for part in capped)
    combined = np.concatenate(capped)
    assert len(np.unique(combined)) == len(combined)


def test_a_test_split_partitioned_by_the_same_seed_keeps_each_sites_label_mix() -> None:
    test_labels = load_dataset("digits", None, 0, 0.2).test.y

    def mixes(labels: np.ndarray, seed: int) -> np.ndarray:
        parts = partition(labels, 6, "dirichlet", seed=seed, alpha=0.3, num_classes=10)
        counts = np.stack([np.bincount(labels[part], minlength=10) for part in parts])
        return counts / counts.sum(axis=1, keepdims=True)

    train = mixes(LABELS, seed=4)
    same_plan = np.abs(train - mixes(test_labels, seed=4)).sum(axis=1)
    other_plan = np.abs(train - mixes(test_labels, seed=5)).sum(axis=1)
    assert same_plan.max() < 0.25
    assert other_plan.mean() > 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha: must be greater than 0, got 0.0"),
        ({"scheme": "shards", "classes_per_site": 11}, "classes_per_site: must be between 1"),
        ({"scheme": "iid", "samples_per_site": 0}, "samples_per_site: must be at least 1"),
        ({"scheme": "uniform"}, "partition: unknown value 'uniform'"),
    ],
)
def test_invalid_partition_settings_are_named(kwargs: dict[str, object], message: str) -> None:
    scheme = str(kwargs.pop("scheme"))
    with pytest.raises(ConfigError) as caught:
        partition(LABELS, 4, scheme, seed=0, **kwargs)  # type: ignore[arg-type]
    assert message in str(caught.value)
