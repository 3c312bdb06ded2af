"""FedYogi: FedOpt with Yogi's second moment.

``v = v - (1 - beta2) * delta^2 * sign(v - delta^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.fedopt import FedOpt


@dataclass(frozen=True)
class FedYogi(FedOpt):
    """FedOpt whose second moment moves by a signed step towards the squared change (Yogi)."""

    name: ClassVar[str] = "fedyogi"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Yogi's rule: ``v - (1 - beta2) * delta^2 * sign(v - delta^2)``."""
        squared = delta**2
        return v - (1 - self.beta2) * squared * np.sign(v - squared)
