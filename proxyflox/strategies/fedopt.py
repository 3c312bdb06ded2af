"""FedOpt (Reddi et al., 2021, "Adaptive Federated Optimization", Algorithm 2).

A server optimizer applied to the averaged model change ``delta = mean(updates) - w``:

    m = beta1 * m + (1 - beta1) * delta
    v = rule(v, delta)                      # FedAdam / FedYogi / FedAdagrad differ only here
    w = w + server_lr * m / (sqrt(v) + tau)

No bias correction (as in the paper); ``m`` and ``v`` start at zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from proxyflox.strategies.base import ServerState, Strategy, Update, step_floats, weighted_mean
from proxyflox.weights import Weights


@dataclass(frozen=True)
class FedOpt(Strategy):
    """Base of the server-optimizer strategies; subclasses define :meth:`second_moment`."""

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The new second moment ``v`` from the old one and this aggregation's ``delta``."""
        raise NotImplementedError

    def aggregate_train(
        self, global_weights: Weights, updates: Iterable[Update], state: ServerState
    ) -> tuple[Weights, ServerState]:
        """One optimizer step on the mean change, moments kept in ``state["m"]``/``["v"]``."""
        mean = weighted_mean(updates)
        m_all: Weights = dict(state.get("m", {}))
        v_all: Weights = dict(state.get("v", {}))

        def step(name: str, current: np.ndarray) -> np.ndarray:
            delta = mean[name] - current
            m = self.beta1 * m_all.get(name, np.zeros_like(delta)) + (1 - self.beta1) * delta
            v = self.second_moment(v_all.get(name, np.zeros_like(delta)), delta)
            m_all[name], v_all[name] = m, v
            return current + self.server_lr * m / (np.sqrt(v) + self.tau)

        return step_floats(global_weights, mean, step), {"m": m_all, "v": v_all}
