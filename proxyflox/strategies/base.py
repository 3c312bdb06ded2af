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

from collections.abc import Callable, Iterable, Mapping, Sequence
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
    #: Whether the site's change was within its clip norm (``None``: the site did not clip).
    unclipped: bool | None = None


class Strategy:
    """Base class: FedAvg's behaviour, which the other strategies refine."""

    #: Name in the experiment file (``strategy.name``).
    name: ClassVar[str] = ""
    #: ``weights``: sites return their trained model; ``delta``: trained minus received.
    update_kind: ClassVar[str] = "weights"
    #: Asynchronous strategies aggregate as updates arrive instead of once per round.
    asynchronous: ClassVar[bool] = False
    #: Whether :meth:`aggregate_train` reads the current global model (else it gets ``{}``).
    uses_global_model: ClassVar[bool] = True
    #: The new global model is the sample-weighted mean of the sites' models, nothing else
    #: (so of changes, it is the global model plus their mean).
    averages_models: ClassVar[bool] = False
    #: The rule needs every update of a round at once (a median, Krum's distances), so it
    #: cannot stream them; synchronous only, and refused in an aggregator tree, whose groups
    #: send one mean each.
    needs_every_update: ClassVar[bool] = False
    #: Sites clip their change to a norm the strategy sets (a lossy codec would undo that).
    clips_updates: ClassVar[bool] = False
    #: Columns the strategy adds to ``rounds.csv`` (filled by :meth:`round_report`).
    report_columns: ClassVar[tuple[str, ...]] = ()

    def configure_train(
        self, round_number: int, sites: Sequence[int], rng: np.random.Generator, count: int
    ) -> list[int]:
        """Which sites train in this round: ``count`` of ``sites``, drawn with ``rng``."""
        if count >= len(sites):
            return list(sites)
        return sorted(int(site) for site in rng.choice(sites, size=count, replace=False))

    @property
    def updates_per_aggregation(self) -> int:
        """How many updates an asynchronous strategy buffers before it aggregates them."""
        return 1

    def train_instructions(self) -> dict[str, Any]:
        """What every site's train app is told besides the global model (e.g. ``proximal_mu``)."""
        return {}

    def for_run(self, *, seed: int, num_sites: int, clients_per_round: int) -> Strategy:
        """This strategy with what depends on the run resolved; checks that it fits the run.

        Raises:
            ConfigError: naming a setting that cannot work for this run.
        """
        return self

    def round_instructions(self, state_scalars: Mapping[str, float]) -> dict[str, Any]:
        """What a round's sites are told that follows the state the round starts from."""
        return {}

    def round_report(self, round_number: int, state_scalars: Mapping[str, float]) -> dict[str, Any]:
        """The :attr:`report_columns` of a round's row (``state_scalars``: as it started)."""
        return {}

    def initial_state(self) -> ServerState:
        """The state of the first aggregation; FedAvg carries none."""
        return {}

    def aggregate_train(
        self, global_weights: Weights, updates: Iterable[Update], state: ServerState
    ) -> tuple[Weights, ServerState]:
        """The new global model and state from the current one and the sites' updates.

        Which updates pass the aggregator's checks is known only as they are read, so nothing
        may depend on their number or samples in advance. Update arrays may be modified.
        """
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


#: Entries per step of a scaled add (a scratch buffer this long, not one the size of an array).
CHUNK = 1 << 16


def weighted_mean(updates: Iterable[Update]) -> Weights:
    """Sample-weighted mean of the updates, consuming them one at a time.

    Accumulates the sample-weighted sum and the sample count, and divides once at the end: the
    updates' number and samples need not be known in advance (the aggregator learns which pass
    its checks only as it reads them). Memory stays at the accumulator plus the update being
    added, whatever the number of sites: the first update's arrays become the accumulator where
    they are writable, and each later one is added scaled through a small scratch buffer, so
    updates may be read-only views of the bytes a store returned. A single update comes back
    bit for bit (it is never scaled). Floats accumulate in their own dtype (halves in float32);
    integer and bool arrays (e.g. BatchNorm's ``num_batches_tracked``) in float64, rounded back.

    Args:
        updates: The updates; writable arrays may be modified (the caller resolved them for this).

    Raises:
        ValueError: no updates, an update without samples, or updates of different models.
    """
    total: Weights | None = None
    dtypes: dict[str, np.dtype[Any]] = {}
    samples = first_samples = count = 0
    scratch: dict[np.dtype[Any], np.ndarray] = {}
    for update in updates:
        if update.num_samples <= 0:
            raise ValueError(f"an update reports {update.num_samples} samples; need at least 1")
        weights = update.weights
        if total is None:
            dtypes = {name: np.asarray(a).dtype for name, a in weights.items()}
            total = {name: _accumulator(np.asarray(a)) for name, a in weights.items()}
            first_samples = update.num_samples
        else:
            if weights.keys() != total.keys():
                raise ValueError("updates disagree on parameter names; are all sites on one model?")
            if count == 1:  # the first update was taken as it is: now it needs its weight
                for summed in total.values():
                    np.multiply(summed, first_samples, out=summed)
            _add_update(total, weights, update.num_samples, scratch)
        samples += update.num_samples
        count += 1
        del update, weights  # release this update before the iterator fetches the next
    if total is None:
        raise ValueError("no updates to aggregate")
    if count > 1:
        for summed in total.values():
            np.divide(summed, samples, out=summed)
    return {
        name: np.rint(summed).astype(dtypes[name]) if dtypes[name].kind in "biu" else summed
        for name, summed in total.items()
    }


def state_scalars(state: ServerState) -> dict[str, float]:
    """The single numbers of a strategy state (dpfedavg's clip norm), as the controller sees them.

    They travel with the global model's record, so the controller never resolves the state.
    """
    return {
        name: float(value)
        for name, value in state.items()
        if not isinstance(value, dict) and np.ndim(value) == 0
    }


def _accumulator(array: np.ndarray) -> np.ndarray:
    """The first update's array as the running total: itself where it can be, else one copy."""
    if not is_float(array):
        return array.astype(np.float64)
    if array.dtype.itemsize < 4:
        return array.astype(np.float32)
    if array.flags.writeable and array.flags.c_contiguous:
        return array
    return np.array(array, order="C")


def _add_update(
    total: Weights, weights: Weights, weight: int, scratch: dict[np.dtype[Any], np.ndarray]
) -> None:
    """Add one update into the total (a function of its own: no name outlives the update)."""
    for name, array in weights.items():
        _add_scaled(total[name], np.asarray(array), weight, scratch)


def _add_scaled(
    total: np.ndarray, array: np.ndarray, weight: int, scratch: dict[np.dtype[Any], np.ndarray]
) -> None:
    """``total += weight * array`` in place, a chunk at a time (no array-sized temporary)."""
    if array.shape != total.shape:
        raise ValueError(f"updates disagree on an array's shape: {array.shape} != {total.shape}")
    flat_total, flat = total.reshape(-1), array.reshape(-1)
    if weight == 1:
        np.add(flat_total, flat, out=flat_total, casting="unsafe")
        return
    buffer = scratch.get(total.dtype)
    if buffer is None:
        buffer = scratch[total.dtype] = np.empty(min(CHUNK, max(flat.size, 1)), total.dtype)
    for start in range(0, flat.size, buffer.size):
        part = buffer[: min(buffer.size, flat.size - start)]
        into = flat_total[start : start + part.size]
        np.multiply(flat[start : start + part.size], weight, out=part, casting="unsafe")
        np.add(into, part, out=into)


def is_float(array: np.ndarray) -> bool:
    """Server optimizers move float arrays only; integer buffers follow the plain average."""
    return bool(np.issubdtype(array.dtype, np.floating))


def step_floats(
    current: Weights, integers_from: Weights, step: Callable[[str, np.ndarray], np.ndarray]
) -> Weights:
    """New weights with ``step`` applied to the float arrays of ``current``.

    Each float array goes to ``step(name, array as float64)`` and the result is cast back to its
    dtype; integer arrays (e.g. BatchNorm counters) are taken from ``integers_from``.
    """
    # Integer arrays are copied: a view would keep the whole buffer it was read from alive.
    return {
        name: step(name, array.astype(np.float64)).astype(array.dtype)
        if is_float(array)
        else np.array(integers_from[name])
        for name, array in current.items()
    }
