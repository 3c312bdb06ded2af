"""Seeded partitioners: which training samples each site holds.

A partition is a list with one sorted index array per site; together they cover every sample
exactly once. Every site recomputes the same partition from the same seed, so no index list has
to be shipped from the controller.
"""

from __future__ import annotations

import numpy as np

from proxyflox.config import PARTITIONS, ConfigError, unknown_choice


def partition(
    labels: np.ndarray, num_sites: int, scheme: str, *, seed: int, alpha: float = 0.5
) -> list[np.ndarray]:
    """Split sample indices across ``num_sites`` sites.

    Args:
        labels: Label of every training sample.
        num_sites: Number of sites.
        scheme: ``iid`` (uniform random, equal sizes +-1) or ``dirichlet`` (per-class
            proportions drawn from Dirichlet(alpha)).
        seed: Seeds the split; the same seed gives the same partition everywhere.
        alpha: Dirichlet concentration; smaller means more label skew.

    Raises:
        ConfigError: if a site would get no samples, or the scheme or alpha is invalid.
    """
    if num_sites < 1:
        raise ConfigError(f"sites: must be at least 1, got {num_sites}")
    if num_sites > len(labels):
        raise ConfigError(
            f"sites: {num_sites} sites but only {len(labels)} training samples; "
            "every site needs at least one"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(len(labels)), num_sites)
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, num_sites, alpha, rng)
    else:
        raise unknown_choice("partition", scheme, PARTITIONS)
    empty = [site for site, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise ConfigError(
            f"partition: {scheme} with alpha={alpha} and seed={seed} leaves site(s) "
            f"{', '.join(map(str, empty))} without samples; raise alpha or use fewer sites"
        )
    return [np.sort(part) for part in parts]


def _dirichlet(
    labels: np.ndarray, num_sites: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    if alpha <= 0:
        raise ConfigError(f"alpha: must be greater than 0, got {alpha}")
    per_site: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_sites, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for site, chunk in enumerate(np.split(members, cuts)):
            per_site[site].append(chunk)
    return [np.concatenate(chunks) for chunks in per_site]
