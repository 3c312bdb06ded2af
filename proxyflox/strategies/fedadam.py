"""FedAdam: FedOpt with Adam's second moment, ``v = beta2 * v + (1 - beta2) * delta^2``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.fedopt import FedOpt


@dataclass(frozen=True)
class FedAdam(FedOpt):
    """FedOpt whose second moment is an exponential mean of the squared changes (Adam)."""

    name: ClassVar[str] = "fedadam"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Adam's rule: ``beta2 * v + (1 - beta2) * delta^2``."""
        return self.beta2 * v + (1 - self.beta2) * delta**2
