"""FedAvg (McMahan et al., 2017): the sample-weighted mean of the sites' models.

The new global model is that mean; the current one is not read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from proxyflox.strategies.base import ServerState, Strategy, Update, weighted_mean
from proxyflox.weights import Weights


@dataclass(frozen=True)
class FedAvg(Strategy):
    """Sample-weighted mean of the sites' models."""

    name: ClassVar[str] = "fedavg"
    uses_global_model: ClassVar[bool] = False
    averages_models: ClassVar[bool] = True

    def aggregate_train(
        self, global_weights: Weights, updates: Iterable[Update], state: ServerState
    ) -> tuple[Weights, ServerState]:
        """The sample-weighted mean of the updates; the state passes through unchanged."""
        return weighted_mean(updates), state
