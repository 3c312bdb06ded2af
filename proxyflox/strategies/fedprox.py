"""FedProx (Li et al., 2020): FedAvg with a proximal term in each site's loss.

The server does FedAvg; each site adds ``mu/2 * ||w - w_global||^2`` to its local loss, which
keeps local models near the global one when sites' data differ. With ``mu = 0`` it is FedAvg
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from proxyflox.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedProx(FedAvg):
    """FedAvg whose sites train with a proximal term of strength ``proximal_mu``."""

    name: ClassVar[str] = "fedprox"
    proximal_mu: float = 0.01

    def train_instructions(self) -> dict[str, Any]:
        """Sites are told ``proximal_mu``, the strength of their proximal term."""
        return {"proximal_mu": self.proximal_mu}
