"""DP-FedAvg (McMahan et al., 2018) with fixed or adaptive clipping (Andrew et al., 2021).

Each site clips its model change to L2 norm ``C`` where it trains (``Instructions.clip_norm``);
the aggregator sums the clipped changes, adds Gaussian noise ``N(0, (z C)^2)`` to every float
coordinate of the sum once, divides by the number of changes and adds the result (times
``server_lr``) to the global model::

    w = w + server_lr * (sum_i clip(delta_i, C) + N(0, (z C)^2 I)) / m

Every site weighs the same: weighting by sample counts would let one site move the mean by more
than ``C / m``, which is the bound the noise is sized for. The divisor is the number of changes
aggregated (the sampled sites that returned in time); the noised sum is what is private, and any
divisor that does not look at the data is post-processing.

Adaptive clipping: each site also reports whether its change was within ``C`` (one bit); the
aggregator adds ``N(0, sigma_b^2)`` to the count of such bits and moves ``C`` geometrically
towards the ``target_quantile`` of the norms, ``C = C exp(-eta_C (b - gamma))`` with ``b`` the
noised fraction; the update's noise then uses ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``, so the
two queries together spend what one with noise multiplier ``z`` does. ``C`` is the strategy
state (checkpointed with the global model); the noise of round ``r`` is drawn from
(seed, round), so a resumed run is bit for bit an uninterrupted one.

Integer arrays (BatchNorm's ``num_batches_tracked``) are neither sent (sites zero their change)
nor noised: the global model keeps its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from proxyflox.errors import ConfigError, require_extra
from proxyflox.privacy import adjusted_noise_multiplier, check_accountant, clip_change, epsilon
from proxyflox.seeds import PRIVACY_STREAM, derive_seed
from proxyflox.strategies.base import ServerState, Strategy, Update, is_float, step_floats
from proxyflox.weights import Weights

CLIPPINGS = ("fixed", "adaptive")
#: Andrew et al.'s (and Flower's) default count noise: expected sites per round over 20.
COUNT_STDDEV_PER_SITE = 1 / 20


@dataclass(frozen=True)
class DPFedAvg(Strategy):
    """FedAvg of clipped changes with Gaussian noise on the aggregator."""

    name: ClassVar[str] = "dpfedavg"
    update_kind: ClassVar[str] = "delta"
    clips_updates: ClassVar[bool] = True
    report_columns: ClassVar[tuple[str, ...]] = ("epsilon", "clip_norm")
    #: ``z``: the noise's standard deviation in units of the clip norm.
    noise_multiplier: float = 1.0
    #: ``C``: the bound on each site's change (the first one, with adaptive clipping).
    clip_norm: float = 1.0
    clipping: str = "fixed"
    #: ``gamma``: the share of sites whose change should be within ``C`` (adaptive).
    target_quantile: float = 0.5
    #: ``eta_C``: the clip norm's geometric step (adaptive).
    clip_learning_rate: float = 0.2
    #: ``sigma_b``: noise on the count of unclipped sites (``None``: expected sites / 20).
    clip_count_stddev: float | None = None
    #: Epsilon is reported at this delta.
    delta: float = 1e-5
    server_lr: float = 1.0
    #: Set for the run (:meth:`for_run`): the run seed and the accountant's sampling rate.
    seed: int = 0
    sampling_rate: float = 1.0

    def for_run(self, *, seed: int, num_sites: int, clients_per_round: int) -> DPFedAvg:
        """Resolve the defaults that depend on the run; refuse settings that cannot work.

        Raises:
            ConfigError: one line naming the setting (or the missing extra ``proxyflox[dp]``).
        """
        with require_extra("dp_accounting", "dp", "strategy dpfedavg (its privacy accountant)"):
            check_accountant()
        if self.clipping not in CLIPPINGS:
            raise ConfigError(f"strategy.clipping: {self.clipping!r} is not one of {CLIPPINGS}")
        if self.delta >= 1 / num_sites:
            raise ConfigError(
                f"strategy.delta: {self.delta:g} is not below 1/sites = {1 / num_sites:g}; a "
                "larger delta allows a mechanism that reveals one site's data outright"
            )
        count_stddev = self.clip_count_stddev
        if count_stddev is None:  # as Flower: no noise at all without a noise multiplier
            count_stddev = COUNT_STDDEV_PER_SITE * clients_per_round if self.noise_multiplier else 0
        resolved = replace(
            self,
            clip_count_stddev=count_stddev,
            seed=seed,
            sampling_rate=min(1.0, clients_per_round / num_sites),
        )
        try:
            resolved.update_noise_multiplier()
        except ValueError as err:
            raise ConfigError(
                f"strategy.clip_count_stddev: {err}; raise it or lower noise_multiplier"
            ) from None
        return resolved

    def update_noise_multiplier(self) -> float:
        """The noise multiplier of the update: ``z``, or ``z_delta`` with adaptive clipping."""
        if self.clipping == "fixed":
            return self.noise_multiplier
        return adjusted_noise_multiplier(self.noise_multiplier, self.clip_count_stddev or 0.0)

    def initial_state(self) -> ServerState:
        """The first clip norm, and no aggregation done."""
        return {"clip_norm": np.float64(self.clip_norm), "rounds": np.int64(0)}

    def round_instructions(self, state_scalars: Mapping[str, float]) -> dict[str, Any]:
        """Sites clip to the clip norm of the state the round starts from."""
        return {"clip_norm": float(state_scalars.get("clip_norm", self.clip_norm))}

    def round_report(self, round_number: int, state_scalars: Mapping[str, float]) -> dict[str, Any]:
        """Epsilon spent after this round, and the clip norm its sites clipped to."""
        return {
            "epsilon": epsilon(self.noise_multiplier, self.sampling_rate, round_number, self.delta),
            "clip_norm": float(state_scalars.get("clip_norm", self.clip_norm)),
        }

    def aggregate_train(
        self,
        global_weights: Weights,
        updates: Iterable[Update],
        state: ServerState,
    ) -> tuple[Weights, ServerState]:
        """Add the noised mean of the clipped changes; adapt the clip norm if asked."""
        clip_norm = float(state.get("clip_norm", self.clip_norm))
        rounds = int(state.get("rounds", 0)) + 1
        rng = np.random.default_rng(derive_seed(self.seed, PRIVACY_STREAM, rounds))
        summed: Weights = {}
        count = unclipped = 0
        for update in updates:
            if update.unclipped is None:
                raise ValueError("an update was not clipped on its site; dpfedavg needs every one")
            if update.weights.keys() != global_weights.keys():
                raise ValueError("an update's parameter names differ from the global model's")
            # Clip again here: a site that sent more than C (or float32 rounding just above
            # it) must not stretch the bound that the noise is sized for.
            clipped, _ = clip_change(update.weights, clip_norm)
            for name, array in clipped.items():
                if is_float(array):
                    as_float64 = array.astype(np.float64)
                    if name in summed:
                        summed[name] += as_float64
                    else:
                        summed[name] = as_float64
            count += 1
            unclipped += bool(update.unclipped)
            del update, clipped  # one update's arrays alive at a time
        if count == 0:
            raise ValueError("no updates to aggregate")
        count_noise = rng.normal(0.0, self.clip_count_stddev or 0.0)  # drawn first, always
        noise_stddev = self.update_noise_multiplier() * clip_norm
        for total in summed.values():  # in the model's order: the draws are reproducible
            if noise_stddev > 0:
                total += rng.normal(0.0, noise_stddev, size=total.shape)
            total *= self.server_lr / count
        new = step_floats(
            global_weights, global_weights, lambda name, current: current + summed[name]
        )
        if self.clipping == "adaptive":
            unclipped_share = (unclipped + count_noise) / count
            clip_norm *= math.exp(
                -self.clip_learning_rate * (unclipped_share - self.target_quantile)
            )
        return new, {"clip_norm": np.float64(clip_norm), "rounds": np.int64(rounds)}
