"""The strategy interface: what the server does with the sites' updates.

In the spirit of Flower's strategies, fitted to Parsl futures: the controller asks a strategy
which sites train next (:meth:`Strategy.configure_train`) and what they are told; the aggregate
app, on the aggregator, calls :meth:`Strategy.aggregate_train` with the current global model,
an iterator of updates (resolved one at a time) and the strategy's state; evaluation metrics are
combined by :meth:`Strategy.aggregate_evaluate`.

A strategy object holds only its hyperparameters (small, picklable, sent to the aggregate app);
everything that changes from round to round (server momentum, optimizer moments) is the
explicit ``state`` it returns, which is stored and checkpointed with the global model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from proxyflox.weights import Weights

#: Named arrays and scalars a strategy carries from one aggregation to the next.
ServerState = dict[str, Any]


@dataclass(frozen=True)
class Update:
    """One site's contribution as the aggregator sees it."""

    weights: Weights  # the site's model, or its change, as ``Strategy.update_kind`` says
    num_samples: int
    staleness: int = 0  # global versions published since the site's model was sent out


class Strategy:
    """Base class: FedAvg's behaviour, which the other strategies refine."""

    #: Name in the experiment file (``strategy.name``).
    name: ClassVar[str] = ""
    #: ``weights``: sites return their trained model; ``delta``: trained minus received.
    update_kind: ClassVar[str] = "weights"
    #: Asynchronous strategies aggregate as updates arrive instead of once per round.
    asynchronous: ClassVar[bool] = False

    def configure_train(
        self, round_number: int, sites: Sequence[int], rng: np.random.Generator, count: int
    ) -> list[int]:
        """Which sites train in this round: ``count`` of ``sites``, drawn with ``rng``."""
        if count >= len(sites):
            return list(sites)
        return sorted(int(site) for site in rng.choice(sites, size=count, replace=False))

    def train_instructions(self) -> dict[str, Any]:
        """What every site's train app is told besides the global model (e.g. ``proximal_mu``)."""
        return {}

    def initial_state(self) -> ServerState:
        return {}

    def aggregate_train(
        self, global_weights: Weights, updates: Iterable[Update], state: ServerState
    ) -> tuple[Weights, ServerState]:
        """The new global model and state from the current one and the sites' updates."""
        raise NotImplementedError

    def aggregate_evaluate(
        self, results: Sequence[tuple[int, Mapping[str, float]]]
    ) -> dict[str, float]:
        """Sample-weighted mean of per-site metrics (``(num_samples, metrics)`` pairs)."""
        total = sum(n for n, _ in results)
        if total == 0:
            return {}
        names = results[0][1].keys()
        return {name: sum(n * m[name] for n, m in results) / total for name in names}


def weighted_mean(updates: Iterable[Update]) -> Weights:
    """Sample-weighted mean of the updates, consuming them one at a time.

    Memory stays at one float64 accumulator plus the update being added, whatever the number of
    sites. Accumulating in float64 makes a single update come back bit for bit (``x * n / n`` is
    exact there). Integer arrays (e.g. BatchNorm's ``num_batches_tracked``) are rounded back.
    """
    total: dict[str, np.ndarray] | None = None
    dtypes: dict[str, np.dtype[Any]] = {}
    count = 0
    for update in updates:
        if update.num_samples <= 0:
            raise ValueError(f"an update reports {update.num_samples} samples; need at least 1")
        weights = update.weights
        if total is None:
            total = {name: np.zeros(a.shape, dtype=np.float64) for name, a in weights.items()}
            dtypes = {name: a.dtype for name, a in weights.items()}
        elif weights.keys() != total.keys():
            raise ValueError("updates disagree on parameter names; are all sites on one model?")
        for name, array in weights.items():
            total[name] += np.asarray(array, dtype=np.float64) * update.num_samples
        count += update.num_samples
        del update, weights, array  # release this update before the iterator fetches the next
    if total is None:
        raise ValueError("no updates to aggregate")
    mean: Weights = {}
    for name, summed in total.items():
        summed /= count
        if np.issubdtype(dtypes[name], np.integer):
            summed = np.rint(summed)
        mean[name] = summed.astype(dtypes[name])
    return mean


def is_float(array: np.ndarray) -> bool:
    """Server optimizers move float arrays only; integer buffers follow the plain average."""
    return bool(np.issubdtype(array.dtype, np.floating))
