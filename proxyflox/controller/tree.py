"""A synchronous round in an aggregator tree, as the controller runs it.

Per round, below the root (``rounds.py`` runs the root's aggregate, evaluation and records)::

    down:  each group with sampled sites gets the global model from its parent; where its sites
           read from a store of the group's side (its own store, or its endpoint) the group's
           aggregator fetches it once and puts a copy there (a relay app), so the model crosses
           the group's uplink once
    train: every sampled site, from its group's copy
    up:    a group's aggregate app is submitted once its sites are all in (or round_deadline
           has passed: the late ones are dropped) and its inner groups' partials are settled;
           it puts one partial, which its parent consumes like a site's update

Apps of a group run on the group's aggregator executor, pinned as every app is. The controller
passes each aggregate app the results it has claimed (not futures), which is how the deadline
is applied per group: Parsl would wait for every future it is given. A group whose relay or
aggregate app fails (its aggregator lost) loses its sites' updates for the round; they are
recorded as failed with the reason, and the round goes on if ``min_clients`` holds.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from proxystore.proxy import Proxy, get_factory
from proxystore.store.config import StoreConfig
from proxystore.store.factory import StoreFactory

from proxyflox.controller.records import failure_reason
from proxyflox.controller.store import RunStore
from proxyflox.messages import AggregateResult, GlobalModel, TrainResult
from proxyflox.partials import Partial
from proxyflox.settings import ExperimentConfig
from proxyflox.stores import key_of
from proxyflox.tree import Tree, TreeNode

if TYPE_CHECKING:
    from proxyflox.controller.context import RunContext

#: The root's name where a group's parent is named (its ``parent`` is ``None``).
ROOT = None


class GroupStores:
    """The groups' own stores, opened by the controller, and the store each node reads.

    Args:
        tree: The run's tree.
        config: The experiment (its ``store`` and ``transfer``).
        run_config: The run's store (``None``: direct transfer).
        run_dir: The run's directory; a group's file store defaults to ``groups/NAME/store``.
        warn: Called with a line when objects are left behind.
    """

    def __init__(
        self,
        stack: ExitStack,
        tree: Tree,
        config: ExperimentConfig,
        run_config: StoreConfig | None,
        run_dir: Path,
        warn: Callable[[str], None],
    ) -> None:
        self.endpoints = config.transfer == "proxy" and config.store.backend == "endpoint"
        self.own: dict[str, RunStore] = {}
        #: Group name (``None``: the root) -> the store its sites and inner groups put into.
        self.configs: dict[str | None, StoreConfig | None] = {ROOT: run_config}
        for node in tree.nodes():
            if node.store is not None and run_config is not None:
                home = run_dir / "groups" / node.name
                home.mkdir(parents=True, exist_ok=True)
                store = RunStore(node.store, home, warn)
                stack.callback(store.close)
                self.own[node.name] = store
                self.configs[node.name] = store.config
            else:
                self.configs[node.name] = self.configs[node.parent]

    def relays(self, node: TreeNode) -> bool:
        """Whether the group's aggregator puts a copy of the global model on the group's side.

        With a store of the group's own, and with endpoints (an object lives on the endpoint of
        whoever put it); a shared file system or one Redis would only hold a second copy.
        """
        return node.name in self.own or (self.endpoints and self.configs[node.name] is not None)

    def key_of(self, ref: Any) -> Hashable | None:
        """A stored object's key with its store's name: keys of two Redis servers look alike."""
        if not isinstance(ref, Proxy):
            return None
        factory = cast(StoreFactory[Any, Any], get_factory(ref))
        return (factory.store_config.name, key_of(ref))

    def evict_from(self, run_store: RunStore) -> Callable[[Sequence[Hashable]], None]:
        """Evicts ``(store name, key)`` pairs (:meth:`key_of`) from whichever store holds them."""
        stores = {store.config.name: store for store in [run_store, *self.own.values()]}

        def evict(keys: Sequence[Hashable]) -> None:
            by_store: dict[str, list[Hashable]] = {}
            for pair in keys:
                name, key = cast(tuple[str, Hashable], pair)  # made by key_of
                by_store.setdefault(name, []).append(key)
            for name, store_keys in by_store.items():
                stores[name].evict(store_keys)

        return evict


@dataclass
class TreeArrivals:
    """What reached the root in a round, and what was lost on the way."""

    #: Every site whose update is in what the root aggregates, in sampled order.
    updates: list[TrainResult] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    #: What the root's aggregate consumes: its own sites' updates and its groups' partials.
    inputs: list[TrainResult | Partial] = field(default_factory=list)
    #: The groups' copies of the global model, held until the round's aggregate is made.
    held: list[GlobalModel] = field(default_factory=list)


def tree_round(
    run: RunContext,
    round_number: int,
    sites: Sequence[int],
    global_model: GlobalModel,
    train: Callable[[int, GlobalModel], Future[TrainResult]],
    submitted: Callable[[], None],
    deadline: float | None,
) -> TreeArrivals:
    """Run one round below the root: models down, training, partials up (module docstring).

    Args:
        run: The run (its plan has a tree, and its group stores are open).
        round_number: The round.
        sites: The round's sampled sites.
        global_model: The round's global model, as the root put it.
        train: Submits a site's train app from a model (the ledger expecting it).
        submitted: Called once every train app is out.
        deadline: ``round_deadline``: seconds after the train apps are out.
    """
    ledger, runtime, plan = run.ledger, run.runtime, run.plan
    tree, stores = plan.tree, run.group_stores
    assert tree is not None, "a flat run has no groups"
    assert stores is not None, "open_run opens the group stores of a tree"
    arrivals = TreeArrivals()
    order = {site: index for index, site in enumerate(sites)}
    members: dict[str | None, list[int]] = {}
    for site in sites:
        members.setdefault(tree.group_of(plan.placement[site]), []).append(site)
    nodes = [node for node in tree.nodes() if _subtree_sites(node, members)]
    by_name = {node.name: node for node in nodes}
    lost: dict[str | None, str] = {}  # group -> why its subtree is lost this round

    # Down: the root's own sites first, then each level of groups.
    trains: dict[Future[TrainResult], int] = {
        train(site, global_model): site for site in members.get(ROOT, [])
    }
    models: dict[str | None, GlobalModel] = {ROOT: global_model}
    for level in _levels(nodes):
        relaying = {
            node.name: ledger.expect(
                runtime.relay(node, models[node.parent], stores.configs[node.name]),
                uses=[models[node.parent]],
            )
            for node in level
            if node.parent not in lost and stores.relays(node)
        }
        for node in level:
            if node.parent in lost:
                lost[node.name] = lost[node.parent]
                continue
            if node.name in relaying:
                try:
                    models[node.name] = ledger.claim(relaying[node.name])
                except Exception as err:
                    lost[node.name] = f"group {node.name}: {failure_reason(err)}"
                    continue
                arrivals.held.append(models[node.name])
            else:
                models[node.name] = models[node.parent]
            for site in members.get(node.name, []):
                trains[train(site, models[node.name])] = site
    for name, why in lost.items():
        for site in members.get(name, []):
            arrivals.failed[site] = why
    submitted()

    # Up: each group once its sites and inner groups are settled.
    pending = {
        name: len(members.get(name, [])) + sum(1 for node in nodes if node.parent == name)
        for name in [ROOT, *by_name]
    }
    inputs: dict[str | None, list[TrainResult | Partial]] = {name: [] for name in pending}
    #: The site updates inside each node's inputs, its partial's included.
    contents: dict[str | None, list[TrainResult]] = {name: [] for name in pending}
    aggregating: dict[
        Future[AggregateResult], tuple[TreeNode, bool, list[TrainResult | Partial]]
    ] = {}
    rank = {node.name: index for index, node in enumerate(nodes)}

    def in_order(child: TrainResult | Partial) -> tuple[int, int]:
        # Sites before groups, each in a fixed order: a partial's arrival order is not.
        if isinstance(child, Partial):
            return (1, rank[child.group])
        return (0, order[child.site])

    def child_settled(name: str | None) -> None:
        pending[name] -= 1
        if name is ROOT or pending[name] > 0:
            return
        node = by_name[name]
        children = sorted(inputs[name], key=in_order)
        if not children:  # every site of the group was lost: nothing to send up
            child_settled(node.parent)
            return
        future = runtime.aggregate_group(
            node, models[name], children, stores.configs[name], stores.configs[node.parent]
        )
        changes = all(child.change for child in children)
        aggregating[ledger.expect(future, uses=[*children, models[name]])] = (
            node,
            changes,
            children,
        )
        ledger.release(*children)  # the app holds them now

    for node in reversed(nodes):  # groups lost on the way down are settled at once
        if node.name in lost and node.parent not in lost:
            child_settled(node.parent)

    end = None if deadline is None else time.monotonic() + deadline
    while trains or aggregating:
        timeout = None if end is None or not trains else max(0.0, end - time.monotonic())
        waited: list[Future[Any]] = [*trains, *aggregating]
        done, _ = concurrent.futures.wait(
            waited, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        if not done:  # the deadline: late sites are dropped, their groups go on without them
            for late, site in list(trains.items()):
                del trains[late]
                arrivals.late.append(site)
                ledger.drop(late)
                child_settled(tree.group_of(plan.placement[site]))
            continue
        for future in done:
            if future in trains:
                site = trains.pop(future)
                run.observer.site_returned(round_number, site)
                group = tree.group_of(plan.placement[site])
                if future.exception() is not None:
                    arrivals.failed[site] = failure_reason(future.exception())
                    ledger.drop(future)
                else:
                    update = ledger.claim(future)
                    inputs[group].append(update)
                    contents[group].append(update)
                child_settled(group)
            else:
                node, changes, children = aggregating.pop(future)
                held = contents[node.name]
                try:
                    result: AggregateResult = ledger.claim(future)
                except Exception as err:
                    why = f"group {node.name} aggregator: {failure_reason(err)}"
                    arrivals.failed.update((update.site, why) for update in held)
                else:
                    # What the group's aggregator left out fails its sites, with its reason.
                    for position, site, why in result.rejected:
                        child = children[position]
                        for each in child.sites if isinstance(child, Partial) else (site,):
                            arrivals.failed[each] = why
                    held = [update for update in held if update.site not in arrivals.failed]
                    samples = sum(update.num_samples for update in held)
                    sites_in = tuple(update.site for update in held)
                    partial = Partial(
                        node.name, result.model.weights, samples, changes, sites_in, result
                    )
                    inputs[node.parent].append(partial)
                    contents[node.parent].extend(held)
                child_settled(node.parent)
    arrivals.inputs = sorted(inputs[ROOT], key=in_order)
    arrivals.updates = sorted(contents[ROOT], key=lambda update: order[update.site])
    arrivals.late.sort(key=order.__getitem__)
    arrivals.failed = dict(sorted(arrivals.failed.items(), key=lambda item: order[item[0]]))
    return arrivals


def _subtree_sites(node: TreeNode, members: Mapping[str | None, list[int]]) -> bool:
    """Whether any sampled site is in ``node``'s subtree."""
    return any(members.get(inner.name) for inner in node.walk())


def _levels(nodes: Sequence[TreeNode]) -> list[list[TreeNode]]:
    """The groups by depth, top-level first (``nodes`` lists parents before children)."""
    depth: dict[str | None, int] = {ROOT: 0}
    levels: list[list[TreeNode]] = []
    for node in nodes:
        depth[node.name] = depth[node.parent] + 1
        if depth[node.name] > len(levels):
            levels.append([])
        levels[depth[node.name] - 1].append(node)
    return levels
