"""FedTrimmedAvg (Yin et al., 2018): the coordinate-wise trimmed mean of the sites' models.

For each entry the ``int(trim_fraction * n)`` smallest and as many largest values of the
round's ``n`` models are dropped and the rest averaged (plainly: sample counts are not used),
exactly as Flower's FedTrimmedAvg (its ``beta``, default 0.2) and ``scipy.stats.trim_mean`` do.
It resists ``byzantine`` arbitrary models as long as that many are trimmed from each end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.every_update import EveryUpdateStrategy, coordinatewise, plain_mean
from proxyflox.weights import Weights


@dataclass(frozen=True)
class FedTrimmedAvg(EveryUpdateStrategy):
    """Coordinate-wise mean of the sites' models without the extremes of each entry."""

    name: ClassVar[str] = "fedtrimmedavg"
    #: Share of the updates dropped from each end, in [0, 0.5).
    trim_fraction: float = 0.2

    def trimmed(self, num_updates: int) -> int:
        """How many values are dropped from each end of ``num_updates``."""
        return int(self.trim_fraction * num_updates)

    def problem_with(self, num_updates: int) -> str | None:
        """Every attacker's value must be trimmed: ``int(trim_fraction * n) >= f``."""
        if not 0 <= self.trim_fraction < 0.5:
            return f"fedtrimmedavg needs trim_fraction in [0, 0.5), got {self.trim_fraction}"
        cut = self.trimmed(num_updates)
        if cut >= self.byzantine:
            return None
        return (
            f"fedtrimmedavg with trim_fraction={self.trim_fraction} drops {cut} of "
            f"{num_updates} updates from each end, fewer than byzantine={self.byzantine}"
        )

    def combine(self, models: list[Weights]) -> Weights:
        """The trimmed mean of every entry."""
        n = len(models)
        cut = self.trimmed(n)

        def trimmed_mean(block: np.ndarray) -> np.ndarray:
            if cut:
                block.partition((cut, n - cut - 1), axis=0)  # in place: the kept ones in between
            return plain_mean(block[cut : n - cut])

        return coordinatewise(models, trimmed_mean)
