"""FedAsync (Xie et al., 2019): asynchronous, each arriving model mixed in at once.

Every arriving model is mixed into the global one, weighted down by its staleness ``s``:

    alpha_s = alpha * S(s);   w = (1 - alpha_s) * w + alpha_s * w_site

with ``S`` constant (1), polynomial ``(s + 1) ** -a`` or hinge (1 if ``s <= b``, else
``1 / (a * (s - b) + 1)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from proxyflox.strategies.base import ServerState, Strategy, Update, step_floats
from proxyflox.weights import Weights

#: ``strategy.staleness`` name -> ``S(staleness, a, b)``.
STALENESS_FUNCTIONS: dict[str, Callable[[int, float, float], float]] = {
    "constant": lambda s, a, b: 1.0,
    "polynomial": lambda s, a, b: float((s + 1) ** -a),
    "hinge": lambda s, a, b: 1.0 if s <= b else 1.0 / (a * (s - b) + 1.0),
}


def staleness_weight(kind: str, staleness: int, a: float, b: float) -> float:
    """``S(staleness)`` for the named staleness function."""
    if kind not in STALENESS_FUNCTIONS:
        raise ValueError(
            f"unknown staleness function {kind!r}; known: {', '.join(STALENESS_FUNCTIONS)}"
        )
    return STALENESS_FUNCTIONS[kind](staleness, a, b)


@dataclass(frozen=True)
class FedAsync(Strategy):
    """Mix each update into the global model as it arrives, discounted by staleness."""

    name: ClassVar[str] = "fedasync"
    asynchronous: ClassVar[bool] = True
    alpha: float = 0.6
    staleness: str = "polynomial"
    staleness_a: float = 0.5
    staleness_b: float = 4.0

    def aggregate_train(
        self, global_weights: Weights, updates: Iterable[Update], state: ServerState
    ) -> tuple[Weights, ServerState]:
        """Mix each update into the model in arrival order; the state passes through unchanged."""
        new = global_weights
        for update in updates:
            mix = self.alpha * staleness_weight(
                self.staleness, update.staleness, self.staleness_a, self.staleness_b
            )
            new = step_floats(
                new,
                update.weights,
                lambda name, current: (1 - mix) * current + mix * update.weights[name],  # noqa: B023
            )
        return new, state
