"""FedMedian (Yin et al., 2018): the coordinate-wise median of the sites' models.

Each entry of the new model is the median of that entry over the round's models (for an even
number, the mean of the two middle ones, as ``np.median`` and Flower's FedMedian do). It
resists up to ``byzantine`` arbitrary models among ``2 * byzantine + 1`` or more: a majority of
honest values brackets every median. Sample counts are not used (as in Flower).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.every_update import EveryUpdateStrategy, coordinatewise
from proxyflox.weights import Weights


@dataclass(frozen=True)
class FedMedian(EveryUpdateStrategy):
    """Coordinate-wise median of the sites' models."""

    name: ClassVar[str] = "fedmedian"

    def problem_with(self, num_updates: int) -> str | None:
        """A median needs a majority of honest updates: at least ``2f + 1``."""
        needed = 2 * self.byzantine + 1
        if num_updates >= needed:
            return None
        return (
            f"fedmedian with byzantine={self.byzantine} needs at least 2f+1 = {needed} updates "
            f"per round (an honest majority), got {num_updates}"
        )

    def combine(self, models: list[Weights]) -> Weights:
        """The median of every entry."""
        return coordinatewise(models, lambda block: np.median(block, axis=0, overwrite_input=True))
