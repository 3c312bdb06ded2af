"""FedAvg (McMahan et al., 2017): the new global model is the sample-weighted mean of the
sites' models."""

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

    def aggregate_train(
        self,
        global_weights: Weights,
        updates: Iterable[Update],
        total_samples: int,
        state: ServerState,
    ) -> tuple[Weights, ServerState]:
        return weighted_mean(updates, total_samples), state
