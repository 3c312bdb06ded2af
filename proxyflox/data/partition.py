"""Seeded partitioners: which samples each site holds.

A partition is a list with one sorted index array per site; without a cap on site size they
cover every sample exactly once. Every site recomputes the same partition from the same seed, so
no index list has to be shipped from the controller.

Each scheme first draws a *plan* that depends only on the seed, the number of sites and the
number of classes (Dirichlet label shares, or which classes a site holds), then deals the samples
out by that plan. Partitioning the test split with the same seed therefore gives every site a
local test set with the label mix of its training data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from proxyflox.errors import ConfigError, unknown_choice

#: (labels, sites, classes, rng, alpha, classes_per_site) -> the samples of each site.
Split = Callable[[np.ndarray, int, int, np.random.Generator, float, int], list[np.ndarray]]


@dataclass(frozen=True)
class Scheme:
    """An entry of the partition registry."""

    split: Split
    #: What to tell the user when a site gets no samples.
    remedy: str
    #: The setting that shapes the split, named in that message.
    setting: str | None = None


def partition(
    labels: np.ndarray,
    num_sites: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_site: int = 2,
    samples_per_site: int | None = None,
    num_classes: int | None = None,
    what: str = "training samples",
) -> list[np.ndarray]:
    """Split sample indices across ``num_sites`` sites.

    Args:
        labels: Label of every sample (integers in ``[0, num_classes)``).
        num_sites: Number of sites.
        scheme: ``iid`` (uniform random, equal sizes +-1), ``dirichlet`` (each class's samples
            shared out in proportions drawn from Dirichlet(alpha)) or ``shards`` (each site holds
            ``classes_per_site`` classes; a class is split evenly among the sites holding it).
        seed: Seeds the split; the same seed gives the same partition everywhere.
        alpha: Dirichlet concentration; smaller means more label skew.
        classes_per_site: Classes per site for ``shards``.
        samples_per_site: Keep at most this many (seeded random) samples per site.
        num_classes: Number of classes of the dataset (default: largest label + 1); pass it so
            that splits which lack some class still draw the same plan.
        what: What ``labels`` are, for error messages (``"training samples"``).

    Raises:
        ConfigError: if a site would get no samples, or a setting is invalid for this data.
    """
    if num_sites < 1:
        raise ConfigError(f"sites: must be at least 1, got {num_sites}")
    if num_sites > len(labels):
        raise ConfigError(
            f"sites: {num_sites} sites but only {len(labels)} {what}; every site needs at least one"
        )
    if samples_per_site is not None and samples_per_site < 1:
        raise ConfigError(f"samples_per_site: must be at least 1, got {samples_per_site}")
    if scheme not in PARTITIONS:
        raise unknown_choice("partition", scheme, PARTITIONS)
    entry = PARTITIONS[scheme]
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    rng = np.random.default_rng(seed)
    parts = entry.split(labels, num_sites, classes, rng, alpha, classes_per_site)
    empty = [site for site, part in enumerate(parts) if len(part) == 0]
    if empty:
        values = {"alpha": alpha, "classes_per_site": classes_per_site}
        shaped = f" with {entry.setting}={values[entry.setting]}" if entry.setting else ""
        listed = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise ConfigError(
            f"partition: {scheme}{shaped} and seed={seed} leaves {len(empty)} of {num_sites} "
            f"site(s) ({listed}) without {what}; {entry.remedy}"
        )
    if samples_per_site is not None:
        # A random subset, not the first n: Dirichlet parts are ordered by class.
        parts = [rng.permutation(part)[:samples_per_site] for part in parts]
    return [np.sort(part) for part in parts]


def _iid(
    labels: np.ndarray,
    num_sites: int,
    num_classes: int,
    rng: np.random.Generator,
    alpha: float,
    classes_per_site: int,
) -> list[np.ndarray]:
    return np.array_split(rng.permutation(len(labels)), num_sites)


def _dirichlet(
    labels: np.ndarray,
    num_sites: int,
    num_classes: int,
    rng: np.random.Generator,
    alpha: float,
    classes_per_site: int,
) -> list[np.ndarray]:
    if alpha <= 0:
        raise ConfigError(f"alpha: must be greater than 0, got {alpha}")
    # The whole plan first, so it depends on nothing but the seed and the sizes.
    shares = rng.dirichlet(np.full(num_sites, alpha), size=num_classes)
    per_site: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for label in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(shares[label])[:-1] * len(members)).astype(int)
        for site, chunk in enumerate(np.split(members, cuts)):
            per_site[site].append(chunk)
    return [np.concatenate(chunks) for chunks in per_site]


def _shards(
    labels: np.ndarray,
    num_sites: int,
    num_classes: int,
    rng: np.random.Generator,
    alpha: float,
    classes_per_site: int,
) -> list[np.ndarray]:
    if not 1 <= classes_per_site <= num_classes:
        raise ConfigError(
            f"classes_per_site: must be between 1 and the dataset's {num_classes} classes, "
            f"got {classes_per_site}"
        )
    if num_sites * classes_per_site < num_classes:
        raise ConfigError(
            f"partition: shards with {num_sites} sites x classes_per_site={classes_per_site} "
            f"holds only {num_sites * classes_per_site} of the {num_classes} classes; "
            "use more sites or more classes_per_site"
        )
    # Sites take consecutive runs of a shuffled class order, wrapping around: every class is
    # held by some site and a site never holds one class twice.
    order = rng.permutation(num_classes)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for site in range(num_sites):
        for slot in range(classes_per_site):
            holders[order[(site * classes_per_site + slot) % num_classes]].append(site)
    per_site: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for label in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        for site, chunk in zip(
            holders[label], np.array_split(members, len(holders[label])), strict=True
        ):
            per_site[site].append(chunk)
    return [
        np.concatenate(chunks) if chunks else np.array([], dtype=np.int64) for chunks in per_site
    ]


#: ``partition`` name -> scheme; a new scheme is one function and one entry here.
PARTITIONS: dict[str, Scheme] = {
    "iid": Scheme(_iid, "use fewer sites"),
    "dirichlet": Scheme(_dirichlet, "raise alpha or use fewer sites", "alpha"),
    "shards": Scheme(_shards, "use fewer sites or more classes_per_site", "classes_per_site"),
}
