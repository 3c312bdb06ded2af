"""Multi store: named connectors, and a route per executor saying which one it puts into.

A site on the controller's LAN puts into Redis, a cluster node into the shared file system,
and only sites behind NAT into endpoints; the aggregator has its route too::

    store:
      backend: multi
      connectors:                       # name -> that backend's own settings
        lan: {backend: redis, host: 10.0.0.5, port: 6379}
        shared: {backend: file, directory: /scratch/proxyflox}
        wan: {backend: endpoint, endpoints_file: .endpoints/endpoints.yaml}
      put: lan                          # where executors put, unless their own route says
      read: null                        # what every executor can reach (null: all connectors)
    site_options:
      pi-1: {store_put: wan, store_read: wan}       # behind NAT: endpoints only
      node-1: {store_put: shared}
      aggregator: {store_put: wan}      # the global model goes where every site can read it

An executor's route (:class:`StoreRoute`) is the connector it puts into and the connectors its
processes open to read: its own, plus the aggregator's (a site reads the global model there),
or every site's (the aggregator reads their updates). :func:`routes_for` builds the routes of a
set of executor labels and refuses, in one line, a route whose objects some reader cannot
reach (``store_read``/``store.read`` say what each executor can reach).

How ProxyStore's ``MultiConnector`` routes here: every connector's :class:`Policy` carries its
name as its only subset tag, so a put tagged ``{NAME}`` can only land in connector ``NAME``,
and the ``MultiKey`` it returns names that connector: whoever resolves the key reads it from
there, whoever put it. What ``MultiConnector`` cannot express is a choice by process: its
``host_pattern`` tells machines apart by host name, but sites that share a host name (network
namespaces, several executors on one node) or share a route across machines need the
executor's own route. So each app enters its route first (:func:`use_store_route`, through
``proxyflox.stores.enter_site``); then :class:`RoutedMultiConnector`, rebuilt from the config
travelling inside every proxy, opens only the connectors that route reads (the others stay
dormant, as ``MultiConnector`` keeps connectors of other hosts: a site behind NAT never opens
Redis) and tags an untagged put with the route's connector. The controller opens every
connector: it evicts every object by key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxystore.connectors.multi import (
    ConnectorPolicyConfig,
    MultiConnector,
    MultiConnectorError,
    MultiKey,
    Policy,
)
from proxystore.connectors.protocols import Connector
from proxystore.utils.imports import import_from_path

from proxyflox.errors import ConfigError
from proxyflox.stores.backend import StoreBackend
from proxyflox.stores.settings import StoreSettings


@dataclass(frozen=True, slots=True)
class StoreRoute:
    """Where one executor's processes put objects, and the connectors they open to read."""

    put: str
    reads: tuple[str, ...]


_current = threading.local()


def use_store_route(route: StoreRoute | None) -> None:
    """Enter this executor's route in the calling thread (an app's first step).

    ``None`` (another backend, or the controller) leaves every connector open and puts
    untagged.
    """
    _current.route = route


def current_store_route() -> StoreRoute | None:
    """The route the calling thread entered last."""
    return getattr(_current, "route", None)


def connector_policy(name: str) -> Policy:
    """The policy of connector ``name``: a put matches it only when tagged with the name."""
    return Policy(subset_tags=[name])


class RoutedMultiConnector(MultiConnector):
    """ProxyStore's ``MultiConnector``, routed by the route of the process that uses it.

    Built from its config (``RoutedMultiConnector(**config())``, the way ProxyStore 1.1.0
    rebuilds connectors in other processes) it opens only the connectors the calling thread's
    route reads; a put without tags goes into the route's connector.

    Args:
        connectors: ``{name: (connector type path, its config, policy as a dict)}``, what
            ``MultiConnector.config()`` gives.
    """

    def __init__(self, connectors: Mapping[str, ConnectorPolicyConfig]) -> None:
        route = current_store_route()
        opened: dict[str, tuple[Connector[Any], Policy]] = {}
        dormant: dict[str, ConnectorPolicyConfig] = {}
        for name, (path, options, policy) in connectors.items():
            if route is None or name in route.reads:
                opened[name] = (import_from_path(path).from_config(options), Policy(**policy))
            else:
                dormant[name] = (path, options, policy)
        super().__init__(opened, dormant_connectors=dormant)

    @classmethod
    def of(cls, connectors: Mapping[str, Connector[Any]]) -> RoutedMultiConnector:
        """Over connectors already open (the controller's), each tagged with its name."""
        multi = cls.__new__(cls)
        MultiConnector.__init__(
            multi, {name: (c, connector_policy(name)) for name, c in connectors.items()}
        )
        return multi

    def config(self) -> dict[str, Any]:
        """Every connector's config, dormant ones included, in the shape ``__init__`` takes."""
        return {"connectors": super().config()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RoutedMultiConnector:
        """Rebuild from :meth:`config`."""
        return cls(**config)

    def put(
        self, obj: Any, subset_tags: Iterable[str] = (), superset_tags: Iterable[str] = ()
    ) -> MultiKey:
        """Put into the connector the tags select; untagged, into this route's connector.

        Raises:
            MultiConnectorError: untagged, and this thread entered no route.
        """
        if not subset_tags and not superset_tags:
            route = current_store_route()
            if route is None:
                raise MultiConnectorError(
                    "a put into the multi store needs the putting executor's route "
                    "(proxyflox.stores.enter_site) or tags naming a connector"
                )
            subset_tags = (route.put,)
        return super().put(obj, subset_tags=subset_tags, superset_tags=superset_tags)


def routes_for(
    settings: StoreSettings,
    site_labels: Sequence[str],
    aggregator: str = "aggregator",
    put: Mapping[str, str | None] | None = None,
    read: Mapping[str, Sequence[str] | None] | None = None,
) -> dict[str, StoreRoute]:
    """The route of every site executor and of the aggregator, checked.

    Args:
        settings: The ``store`` section (``backend: multi``).
        site_labels: The site executors.
        aggregator: The aggregator's executor label.
        put: Per label, the connector it puts into (default ``store.put``).
        read: Per label, the connectors it can reach (default ``store.read``, else all).

    Raises:
        ConfigError: one line naming the key: an unknown connector, or an object some reader
            cannot reach.
    """
    put, read = put or {}, read or {}
    names = list(settings.connectors)
    labels = [*dict.fromkeys(site_labels), aggregator]

    def known(key: str, chosen: Iterable[str]) -> list[str]:
        chosen = list(chosen)
        for name in chosen:
            if name not in settings.connectors:
                raise ConfigError(
                    f"{key}: no connector named {name!r} in store.connectors ({', '.join(names)})"
                )
        return chosen

    puts: dict[str, str] = {}
    reachable: dict[str, tuple[str, set[str]]] = {}
    for label in labels:
        own_put, own_read = put.get(label), read.get(label)
        put_key = f"site_options.{label}.store_put" if own_put else "store.put"
        (puts[label],) = known(put_key, [own_put or settings.put or ""])
        if own_read:
            reachable[label] = (
                f"site_options.{label}.store_read",
                set(known(f"site_options.{label}.store_read", own_read)),
            )
        elif settings.read:
            reachable[label] = ("store.read", set(known("store.read", settings.read)))
        else:
            reachable[label] = ("store.read", set(names))
    routes: dict[str, StoreRoute] = {}
    for label in labels:
        key, can_read = reachable[label]
        can_read.add(puts[label])  # what an executor writes to, it can read back
        if label == aggregator:
            needs = {site: puts[site] for site in labels if site != aggregator}
            what = "puts its updates"
        else:
            needs = {aggregator: puts[aggregator]}
            what = "puts the global model"
        for writer, name in needs.items():
            if name not in can_read:
                raise ConfigError(
                    f"{key}: {label} cannot read connector {name!r}, where {writer} {what} "
                    f"({label} reads {', '.join(sorted(can_read))})"
                )
        wanted = {puts[label], *needs.values()}
        routes[label] = StoreRoute(puts[label], tuple(n for n in names if n in wanted))
    return routes


class MultiBackend:
    """Named connectors of the other backends, one route per executor."""

    def __init__(self, backends: Mapping[str, StoreBackend]) -> None:
        self.backends = backends

    def describe(self, settings: StoreSettings, run_dir: Path | None) -> str:
        """``multi store (lan: redis at ..., wan: endpoint store (relay ...))``."""
        parts = [
            f"{name}: {self.backends[c.backend].describe(c, run_dir)}"
            for name, c in settings.connectors.items()
        ]
        return f"multi store ({', '.join(parts)})"

    def check(self, settings: StoreSettings) -> None:
        """Check every connector as its own backend does."""
        for connector in settings.connectors.values():
            self.backends[connector.backend].check(connector)

    def connector(self, settings: StoreSettings, run_dir: Path) -> RoutedMultiConnector:
        """Every connector open, as the controller needs them to evict."""
        return RoutedMultiConnector.of(
            {
                name: self.backends[c.backend].connector(c, run_dir)
                for name, c in settings.connectors.items()
            }
        )

    def site_options(self, settings: StoreSettings) -> dict[str, dict[str, str]]:
        """What the connectors' backends need per executor (an endpoint's home)."""
        options: dict[str, dict[str, str]] = {}
        for connector in settings.connectors.values():
            for label, values in self.backends[connector.backend].site_options(connector).items():
                options.setdefault(label, {}).update(values)
        return options
