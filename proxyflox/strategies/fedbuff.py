"""FedBuff (Nguyen et al., 2022): asynchronous, applying buffered model changes.

Sites send their model change (trained minus received); the server applies the sample-weighted
mean of every ``buffer_size`` changes, ``w = w + server_lr * mean(deltas)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from proxyflox.strategies.base import ServerState, Strategy, Update, step_floats, weighted_mean
from proxyflox.weights import Weights


@dataclass(frozen=True)
class FedBuff(Strategy):
    """Apply the mean of each ``buffer_size`` buffered model changes."""

    name: ClassVar[str] = "fedbuff"
    update_kind: ClassVar[str] = "delta"
    asynchronous: ClassVar[bool] = True
    buffer_size: int = 3
    server_lr: float = 1.0

    @property
    def updates_per_aggregation(self) -> int:
        """FedBuff aggregates every ``buffer_size`` updates."""
        return self.buffer_size

    def aggregate_train(
        self, global_weights: Weights, updates: Iterable[Update], state: ServerState
    ) -> tuple[Weights, ServerState]:
        """Add ``server_lr`` times the mean of the buffered changes; the state is unchanged."""
        mean_delta = weighted_mean(updates)
        new = step_floats(
            global_weights,
            global_weights,
            lambda name, current: current + self.server_lr * mean_delta[name],
        )
        return new, state
