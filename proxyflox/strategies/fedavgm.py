"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum.

``d = w - mean(updates)``; ``v = momentum * v + d``; ``w = w - server_lr * v``.
With ``momentum = 0`` and ``server_lr = 1`` it is FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.base import ServerState, Strategy, Update, step_floats, weighted_mean
from proxyflox.weights import Weights


@dataclass(frozen=True)
class FedAvgM(Strategy):
    """FedAvg with server-side momentum over the averaged model change."""

    name: ClassVar[str] = "fedavgm"
    server_lr: float = 1.0
    server_momentum: float = 0.9

    def aggregate_train(
        self, global_weights: Weights, updates: Iterable[Update], state: ServerState
    ) -> tuple[Weights, ServerState]:
        """Move the model towards the mean with server momentum, kept in ``state["velocity"]``."""
        mean = weighted_mean(updates)
        velocity: Weights = dict(state.get("velocity", {}))

        def step(name: str, current: np.ndarray) -> np.ndarray:
            velocity[name] = self.server_momentum * velocity.get(name, 0.0) + (current - mean[name])
            return current - self.server_lr * velocity[name]

        return step_floats(global_weights, mean, step), {"velocity": velocity}
