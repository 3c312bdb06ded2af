"""FedBuff (Nguyen et al., 2022): asynchronous, applying buffered model changes.

Sites send their model change ``delta`` (trained minus received); every ``K = buffer_size``
changes the server moves the model by their mean. With ``staleness_scaling: sqrt`` (the
default, the paper's rule) each change is first scaled by ``s(tau) = 1 / sqrt(1 + tau)``, tau
its staleness, and the mean is plain, as in the paper's Algorithm 1:

    w = w + server_lr * (1/K) * sum_k s(tau_k) * delta_k

(the paper writes ``w - eta_g * mean`` of ``received - trained``: the same step). With
``staleness_scaling: none`` the mean is sample-weighted and unscaled (ProxyFlox's earlier rule).

Integer buffers (BatchNorm's ``num_batches_tracked``) are not averaged: they take the newest
buffered update's change, i.e. they become that update's own values where it trained from the
current model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from proxyflox.strategies.base import ServerState, Strategy, Update, is_float, weighted_mean
from proxyflox.weights import Weights

#: ``strategy.staleness_scaling`` -> ``s(staleness)``; ``none`` also weighs by samples.
STALENESS_SCALINGS: dict[str, Callable[[int], float]] = {
    "sqrt": lambda staleness: 1.0 / float(np.sqrt(1.0 + staleness)),
    "none": lambda staleness: 1.0,
}


@dataclass(frozen=True)
class FedBuff(Strategy):
    """Apply the (staleness-scaled) mean of each ``buffer_size`` buffered model changes."""

    name: ClassVar[str] = "fedbuff"
    update_kind: ClassVar[str] = "delta"
    asynchronous: ClassVar[bool] = True
    buffer_size: int = 3
    server_lr: float = 1.0
    staleness_scaling: str = "sqrt"

    @property
    def updates_per_aggregation(self) -> int:
        """FedBuff aggregates every ``buffer_size`` updates."""
        return self.buffer_size

    def aggregate_train(
        self, global_weights: Weights, updates: Iterable[Update], state: ServerState
    ) -> tuple[Weights, ServerState]:
        """Add ``server_lr`` times the buffer's mean change; the state is unchanged."""
        if self.staleness_scaling not in STALENESS_SCALINGS:
            raise ValueError(
                f"unknown staleness scaling {self.staleness_scaling!r}; known: "
                f"{', '.join(STALENESS_SCALINGS)}"
            )
        newest: Weights = {}
        buffered = _keeping_integers(updates, newest)
        if self.staleness_scaling == "none":
            mean_delta = weighted_mean(buffered)
        else:
            mean_delta = _scaled_mean(buffered, STALENESS_SCALINGS[self.staleness_scaling])
        new = {
            name: (current + self.server_lr * mean_delta[name]).astype(current.dtype)
            if is_float(current)
            else (current + newest[name]).astype(current.dtype)
            for name, current in global_weights.items()
        }
        return new, state


def _keeping_integers(updates: Iterable[Update], newest: Weights) -> Iterator[Update]:
    """The updates, with the integer arrays of the latest one so far copied into ``newest``."""
    for update in updates:
        newest.clear()
        newest.update({name: np.array(a) for name, a in update.weights.items() if not is_float(a)})
        yield update


def _scaled_mean(updates: Iterable[Update], scale: Callable[[int], float]) -> Weights:
    """``(1/K) * sum_k scale(staleness_k) * delta_k`` over the float arrays, one update at a time.

    Each update is scaled in place and added to one accumulator in its own dtype, so memory
    stays at the accumulator plus the update being added.
    """
    total: Weights = {}
    count = 0
    for update in updates:
        _add_scaled(total, update.weights, scale(update.staleness))
        count += 1
        del update  # release this update before the iterator fetches the next
    if count == 0:
        raise ValueError("no updates to aggregate")
    for summed in total.values():
        summed /= count
    return total


def _add_scaled(total: Weights, delta: Weights, factor: float) -> None:
    """``total += factor * delta`` for the float arrays, scaling ``delta`` in place."""
    for name, array in delta.items():
        if not is_float(array):
            continue
        if not array.flags.writeable:
            array = array.copy()
        np.multiply(array, array.dtype.type(factor), out=array)
        if name in total:
            total[name] += array
        else:
            total[name] = array
