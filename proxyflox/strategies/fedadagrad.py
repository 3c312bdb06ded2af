"""FedAdagrad: FedOpt with Adagrad's second moment, ``v = v + delta^2``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.fedopt import FedOpt


@dataclass(frozen=True)
class FedAdagrad(FedOpt):
    name: ClassVar[str] = "fedadagrad"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + delta**2
