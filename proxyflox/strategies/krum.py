"""Krum and MultiKrum (Blanchard et al., 2017), in one file: MultiKrum is Krum keeping m > 1.

With ``n`` models and at most ``f = byzantine`` attackers, each model's score is the sum of its
squared Euclidean distances to its ``n - f - 2`` nearest other models. Krum returns the model
with the lowest score, as it is; MultiKrum the plain mean of the ``keep`` (m) lowest-scoring
ones, ``keep`` defaulting to ``n - f``. The paper's guarantee needs ``n > 2f + 2``, which is
refused otherwise (Flower instead takes ``max(1, n - f - 2)`` neighbours, whatever ``n``).

Differences from Flower's Krum, on purpose: distances are over float arrays only (integer
counters such as ``num_batches_tracked`` differ by whole batches and would outweigh every
weight); MultiKrum's mean is plain, as in the paper, not weighted by the reported sample counts
(an attacker that gets selected could otherwise claim any count and take over the mean); ties
go to the lower site index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.base import is_float
from proxyflox.strategies.every_update import (
    EveryUpdateStrategy,
    column_blocks,
    coordinatewise,
    plain_mean,
)
from proxyflox.weights import Weights


@dataclass(frozen=True)
class Krum(EveryUpdateStrategy):
    """The one model closest to its ``n - f - 2`` nearest neighbours."""

    name: ClassVar[str] = "krum"

    def kept(self, num_updates: int) -> int:
        """How many of the lowest-scoring models are averaged: Krum keeps one."""
        return 1

    def problem_with(self, num_updates: int) -> str | None:
        """Krum's guarantee needs ``n > 2f + 2``."""
        if num_updates <= 2 * self.byzantine + 2:
            return (
                f"{self.name} with byzantine={self.byzantine} needs more than 2f+2 = "
                f"{2 * self.byzantine + 2} updates per round, got {num_updates}"
            )
        return None

    def aggregation_bytes(self, num_updates: int, model_bytes: int) -> int:
        """The models, plus the ``n x n`` float64 distance matrix."""
        return super().aggregation_bytes(num_updates, model_bytes) + 8 * num_updates**2

    def scores(self, models: list[Weights]) -> np.ndarray:
        """Each model's sum of squared distances to its ``n - f - 2`` nearest others."""
        distances = squared_distances(models)
        np.fill_diagonal(distances, np.inf)  # a model is not its own neighbour
        neighbours = len(models) - self.byzantine - 2
        return np.sort(distances, axis=1)[:, :neighbours].sum(axis=1)

    def combine(self, models: list[Weights]) -> Weights:
        """The lowest-scoring model as it is, or the plain mean of the ``kept`` lowest."""
        chosen = np.argsort(self.scores(models), kind="stable")[: self.kept(len(models))]
        if len(chosen) == 1:
            return models[int(chosen[0])]
        return coordinatewise([models[int(i)] for i in chosen], plain_mean)


@dataclass(frozen=True)
class MultiKrum(Krum):
    """Krum keeping the ``keep`` lowest-scoring models and averaging them."""

    name: ClassVar[str] = "multikrum"
    #: How many models are averaged (m); ``None``: ``n - byzantine``.
    keep: int | None = None

    def kept(self, num_updates: int) -> int:
        """``keep``, or every model but ``byzantine`` of them."""
        return self.keep if self.keep is not None else num_updates - self.byzantine

    def problem_with(self, num_updates: int) -> str | None:
        """Krum's condition, and no more kept than can be honest (``m <= n - f``)."""
        problem = super().problem_with(num_updates)
        if problem is None and self.kept(num_updates) > num_updates - self.byzantine:
            return (
                f"multikrum keeps {self.kept(num_updates)} of {num_updates} updates, more than "
                f"the n - byzantine = {num_updates - self.byzantine} that can be honest"
            )
        return problem


def squared_distances(models: list[Weights]) -> np.ndarray:
    """``(n, n)`` squared Euclidean distances between the models, over their float arrays.

    From Gram matrices of float64 column blocks (``|a|^2 + |b|^2 - 2 a.b``), clipped at 0.
    """
    n = len(models)
    distances = np.zeros((n, n))
    for name, first in models[0].items():
        if not is_float(first):
            continue
        for _, block in column_blocks([model[name] for model in models], np.float64):
            gram = block @ block.T
            norms = np.diag(gram)
            distances += norms[:, None] + norms[None, :] - 2 * gram
    return np.maximum(distances, 0.0)
