"""What a group aggregator of a tree runs, and the partial it sends up.

A group's aggregate app is the aggregator's own app body (:func:`proxyflox.apps.aggregate_updates`)
with a :class:`GroupMean` in place of the run's strategy: it resolves its children's updates one
at a time (site updates, decoded if compressed, and the partials of the groups inside it) and puts
their sample-weighted mean, which with its sample count is their weighted sum. The root takes each
partial as one update of that many samples, so its strategy's mean of them is the mean over every
site, and its server step (FedOpt, FedAvgM) runs once. Using the flat run's arithmetic for each
group means a tree whose groups hold consecutive runs of the flat order reproduces it: with one
group holding every site, bit for bit (the root's mean of one partial multiplies by exactly 1).

The partial is of what the children send: changes if every child sends a change (codecs), else
models, a change becoming a model again by adding the group's copy of the global model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from proxyflox.apps import as_broadcast
from proxyflox.messages import AggregateResult, GlobalModel, TrainResult, WeightsRef
from proxyflox.stores import enter_site, open_app_store, put_weights, resolve_weights
from proxyflox.strategies import FedAvg

if TYPE_CHECKING:
    from proxystore.store.config import StoreConfig


@dataclass(frozen=True)
class GroupMean(FedAvg):
    """The sample-weighted mean of a group's models; what the group sends up."""

    name: ClassVar[str] = "group-mean"
    #: Changes stay changes: the root, which knows its strategy, turns them into models.
    averages_models: ClassVar[bool] = False


@dataclass(frozen=True)
class GroupMeanOfChanges(GroupMean):
    """The sample-weighted mean of a group's changes (every child sent a change)."""

    name: ClassVar[str] = "group-mean-of-changes"
    update_kind: ClassVar[str] = "delta"


@dataclass(frozen=True, eq=False, slots=True)
class Partial:
    """A group's combined update, as its parent consumes it (like one site's update)."""

    group: str
    #: The group's mean, of changes where ``change`` says so.
    update: WeightsRef
    #: The samples behind it: the mean's weight in its parent's mean.
    num_samples: int
    change: bool
    #: The sites whose updates it holds.
    sites: tuple[int, ...]
    result: AggregateResult

    def refs(self) -> Iterator[WeightsRef]:
        """The stored objects this record refers to."""
        yield self.update


def group_strategy(children: Sequence[TrainResult | Partial]) -> GroupMean:
    """The mean a group takes of its children: of changes if each of them sent one."""
    return GroupMeanOfChanges() if all(child.change for child in children) else GroupMean()


@dataclass(frozen=True, slots=True)
class RelayTask:
    """Put a group's copy of the global model where its sites read it."""

    #: The group's store (or the run's, for endpoints: the copy lives on the group's endpoint).
    store_config: StoreConfig | None
    proxystore_home: str | None
    #: How the global model is put: ``exact`` or ``fp16`` (as the aggregator puts it).
    broadcast: str = "exact"


def relay_global_model(task: RelayTask, model: GlobalModel) -> GlobalModel:
    """Group aggregator: fetch the global model once, put it on the group's side."""
    enter_site(task.proxystore_home)
    weights, _ = resolve_weights(model.weights)
    # Already rounded where the broadcast is fp16: encoding it again changes nothing.
    weights, encoder = as_broadcast(weights, task.broadcast)
    ref, _ = put_weights(weights, open_app_store(task.store_config), encoder)
    return GlobalModel(weights=ref, dataset=model.dataset, layout=model.layout)
