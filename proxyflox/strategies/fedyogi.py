"""FedYogi: FedOpt with Yogi's second moment,
``v = v - (1 - beta2) * delta^2 * sign(v - delta^2)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.fedopt import FedOpt


@dataclass(frozen=True)
class FedYogi(FedOpt):
    name: ClassVar[str] = "fedyogi"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        squared = delta**2
        return v - (1 - self.beta2) * squared * np.sign(v - squared)
