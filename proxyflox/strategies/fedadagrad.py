"""FedAdagrad: FedOpt with Adagrad's second moment, ``v = v + delta^2``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.fedopt import FedOpt


@dataclass(frozen=True)
class FedAdagrad(FedOpt):
    """FedOpt whose second moment sums the squared changes (Adagrad)."""

    name: ClassVar[str] = "fedadagrad"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """Adagrad's rule: ``v + delta^2``."""
        return v + delta**2
