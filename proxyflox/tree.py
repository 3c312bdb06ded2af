"""Aggregator trees: the ``tree`` settings section and the topology built from it.

A group is a set of site executors plus one aggregator executor of its own (a lab's
workstation, an HPC node); groups nest to any depth. The run's ``aggregator`` is the root: its
children are the top-level groups and every site executor no group names. A run without groups
is the tree of depth 1 (flat), the default::

    tree:
      groups:
        lab-a:
          aggregator: lab-a             # executor label of the group's aggregator
          sites: [lab-a-0, lab-a-1]     # site executor labels
          store: {backend: redis, host: 10.1.0.2}   # optional: the lab's own store
          groups: {...}                 # optional: groups inside this one

Pure: no Parsl, no store. :func:`build_tree` checks the settings against the Parsl config's
executor labels and the strategy, with one-line errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from proxyflox.errors import ConfigError, did_you_mean
from proxyflox.schema import Maybe, Settings, Str, validated
from proxyflox.stores.settings import StoreSettings


class GroupSettings(Settings):
    """One group: its aggregator executor, its site executors, the groups inside it."""

    aggregator: Str
    sites: list[Str] = Field(default_factory=list)
    #: The group's own store (same shape as ``store``): its sites read the global model and put
    #: their updates there. Default: the parent's store.
    store: Maybe[StoreSettings] = None
    groups: dict[Str, GroupSettings] = Field(default_factory=dict)


class TreeSettings(Settings):
    """The ``tree`` section: top-level groups by name (none: a flat run)."""

    groups: dict[Str, GroupSettings] = Field(default_factory=dict)


def tree_settings(data: Any, where: str) -> TreeSettings:
    """Tree settings from plain data (a config module's ``tree``), checked; ``where`` names it."""
    return validated(TreeSettings, data, where)


@dataclass(frozen=True)
class TreeNode:
    """A group as the run places it."""

    name: str
    #: Executor label of the group's aggregator.
    aggregator: str
    #: Site executors directly in this group.
    site_labels: tuple[str, ...]
    children: tuple[TreeNode, ...]
    #: The group's own store, if it has one.
    store: StoreSettings | None
    #: Name of the enclosing group (``None``: the root).
    parent: str | None

    def walk(self) -> Iterator[TreeNode]:
        """This group and every group inside it, parents before children."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Tree:
    """The run's aggregator tree below the root."""

    groups: tuple[TreeNode, ...]

    def nodes(self) -> list[TreeNode]:
        """Every group, parents before children."""
        return [node for group in self.groups for node in group.walk()]

    def aggregators(self) -> list[str]:
        """The groups' aggregator executors."""
        return [node.aggregator for node in self.nodes()]

    def group_of(self, label: str) -> str | None:
        """The group a site executor belongs to directly (``None``: the root's own site)."""
        for node in self.nodes():
            if label in node.site_labels:
                return node.name
        return None

    def depth(self) -> int:
        """Aggregation levels: 1 for a flat run, 2 with groups under the root, ..."""

        def depth(node: TreeNode) -> int:
            return 1 + max((depth(child) for child in node.children), default=0)

        return 1 + max((depth(group) for group in self.groups), default=0)


def build_tree(
    settings: TreeSettings,
    labels: Sequence[str],
    aggregator: str,
    *,
    strategy: Any,
    where: str = "tree",
) -> Tree | None:
    """The tree of the settings, checked against the executor labels; ``None`` without groups.

    Every executor appears at most once in the tree (as a site or as one group's aggregator),
    which also rules out cycles; the run's aggregator is the root and appears in no group.

    Args:
        settings: The ``tree`` section.
        labels: Every executor label of the Parsl config.
        aggregator: The run's aggregator (the root).
        strategy: The strategy's class: trees need a synchronous strategy that averages.
        where: How messages name the section.

    Raises:
        ConfigError: one line naming the group and the label that does not fit.
    """
    if not settings.groups:
        return None
    check_tree_strategy(strategy)
    seen: dict[str, str] = {}  # executor label -> where it was placed
    names: set[str] = set()

    def place(label: str, key: str) -> None:
        if label not in labels:
            raise ConfigError(
                f"{key}: no executor labelled {label!r} in the Parsl config"
                f"{did_you_mean(label, labels)}; labels: {', '.join(labels)}"
            )
        if label == aggregator:
            raise ConfigError(
                f"{key}: {label!r} is the run's aggregator, the root of the tree; it belongs to "
                "no group"
            )
        if label in seen:
            raise ConfigError(
                f"{key}: executor {label!r} is already in the tree as {seen[label]}; an executor "
                "belongs to one group, in one role (a group in its own subtree is a cycle)"
            )
        seen[label] = key

    def node(name: str, group: GroupSettings, key: str, parent: str | None) -> TreeNode:
        if name in names:
            raise ConfigError(f"{key}: group name {name!r} is used twice; names are unique")
        names.add(name)
        place(group.aggregator, f"{key}.aggregator")
        for index, label in enumerate(group.sites):
            place(label, f"{key}.sites[{index}]")
        if not group.sites and not group.groups:
            raise ConfigError(f"{key}: has no sites and no groups; a group aggregates something")
        children = tuple(
            node(child, inner, f"{key}.groups.{child}", name)
            for child, inner in group.groups.items()
        )
        return TreeNode(name, group.aggregator, tuple(group.sites), children, group.store, parent)

    groups = tuple(
        node(name, group, f"{where}.groups.{name}", None) for name, group in settings.groups.items()
    )
    return Tree(groups)


def check_tree_strategy(strategy: Any) -> None:
    """Trees combine partial means: refuse strategies that cannot work on those.

    Raises:
        ConfigError: for an asynchronous strategy, one that needs every update at the root, or
            a private one (its clipped changes are weighed equally and noised at the root).
    """
    if strategy.asynchronous:
        raise ConfigError(
            f"tree: strategy {strategy.name} is asynchronous: it applies each update as it "
            "arrives, while a group aggregator combines a round's updates into one; use a "
            "synchronous strategy with groups"
        )
    if strategy.needs_every_update:
        raise ConfigError(
            f"tree: strategy {strategy.name} needs every site's update at the root, while a "
            "group sends one combined update; use a flat run (no tree.groups)"
        )
    if strategy.clips_updates:
        raise ConfigError(
            f"tree: strategy {strategy.name} bounds each site's share of the mean by weighing "
            "sites equally and noising their sum at the root, while a group sends a "
            "sample-weighted mean; use a flat run (no tree.groups)"
        )


GroupSettings.model_rebuild()
