"""ProxyStore Endpoint store: one endpoint per site, objects fetched peer to peer.

Objects stay on the site that put them and are fetched peer to peer (WebRTC, brokered by a
relay server) by whoever resolves them.

Every process uses the endpoint found in its ProxyStore home: a Pi's default home where
``proxystore-endpoint configure`` put its endpoint, or, for several sites on one machine, the
``home`` the endpoints file gives per executor label.

The endpoints file (YAML)::

    relay: ws://controller.example.org:8700   # the relay the endpoints were configured with
    controller_home: /path/to/home            # optional: the controller's endpoint home
    endpoints:                                # executor label -> endpoint
      pi-1: {uuid: 4da791b4-...}
      aggregator: {uuid: 255b86e2-..., home: /path/to/home}
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from uuid import UUID

import yaml
from proxystore.connectors.endpoint import EndpointConnector, EndpointConnectorError, EndpointKey
from proxystore.endpoint.config import get_configs
from proxystore.serialize import BytesLike
from proxystore.utils.environment import home_dir

from proxyflox.errors import ConfigError, StoreUnreachableError
from proxyflox.stores.host_copies import HostCopies, copies_directory, copies_name, reads_are_shared
from proxyflox.stores.settings import StoreSettings


@dataclass(frozen=True)
class EndpointInfo:
    """One executor's endpoint in the endpoints file: its UUID and optional ProxyStore home."""

    uuid: str
    home: str | None = None


@dataclass(frozen=True)
class EndpointsFile:
    """An endpoints file as read: the relay, the endpoints by label, the controller's home."""

    relay: str
    endpoints: dict[str, EndpointInfo]
    controller_home: str | None = None

    @property
    def uuids(self) -> list[str]:
        """Every endpoint's UUID, in file order."""
        return [info.uuid for info in self.endpoints.values()]


def read_endpoints_file(path: str | Path) -> EndpointsFile:
    """Parse and check an endpoints file; :class:`ConfigError` names what is wrong."""
    path = Path(path)
    where = f"store.endpoints_file {path}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist (python -m proxyflox.endpoints up writes one)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict) or not isinstance(data.get("endpoints"), dict):
        raise ConfigError(f"{where}: needs an 'endpoints' mapping of executor label to endpoint")
    if not isinstance(data.get("relay"), str):
        raise ConfigError(f"{where}: needs 'relay', the relay address (ws://HOST:PORT)")
    endpoints = {}
    for label, entry in data["endpoints"].items():
        if not isinstance(entry, dict) or "uuid" not in entry:
            raise ConfigError(f"{where}: endpoint {label!r} needs a 'uuid'")
        try:
            UUID(str(entry["uuid"]))
        except ValueError:
            raise ConfigError(
                f"{where}: endpoint {label!r} has an invalid uuid {entry['uuid']!r}"
            ) from None
        endpoints[str(label)] = EndpointInfo(str(entry["uuid"]), entry.get("home"))
    return EndpointsFile(data["relay"], endpoints, data.get("controller_home"))


def relay_host_port(relay: str) -> tuple[str, int]:
    """``ws://10.0.0.1:8700`` -> ``("10.0.0.1", 8700)``."""
    parsed = urlparse(relay)
    if parsed.hostname is None or parsed.port is None:
        raise ConfigError(f"store.endpoints_file: relay {relay!r} is not ws://HOST:PORT")
    return parsed.hostname, parsed.port


class EndpointBackend:
    """Objects kept by the ProxyStore endpoint of the process that put them."""

    def describe(self, settings: StoreSettings, run_dir: Path | None) -> str:
        """``endpoint store (relay ...)``, the relay as the endpoints file gives it."""
        relay = "?"
        if settings.endpoints_file and Path(settings.endpoints_file).is_file():
            relay = read_endpoints_file(settings.endpoints_file).relay
        return f"endpoint store (relay {relay})"

    def check(self, settings: StoreSettings) -> None:
        """Reach the relay, then open (and close) a connector as the controller would."""
        assert settings.endpoints_file is not None  # validated with the settings
        endpoints = read_endpoints_file(settings.endpoints_file)
        keep_on_uuid(endpoints, settings)  # a label the file lacks: before any connection
        host, port = relay_host_port(endpoints.relay)
        try:
            socket.create_connection((host, port), timeout=5).close()
        except OSError as err:
            raise StoreUnreachableError(
                f"endpoint store: relay {endpoints.relay} is unreachable: {err.strerror or err}"
            ) from None
        self.connector(settings, Path()).close()
        if settings.max_object_size_mb is not None:
            check_object_size(endpoints, settings.max_object_size_mb)

    def connector(self, settings: StoreSettings, run_dir: Path) -> HostSharedEndpointConnector:
        """A connector on every endpoint of the file, from the controller's ProxyStore home."""
        assert settings.endpoints_file is not None
        endpoints = read_endpoints_file(settings.endpoints_file)
        if endpoints.controller_home:
            use_proxystore_home(endpoints.controller_home)
        try:
            # proxystore_dir stays None in the config that travels with proxies: each process
            # then finds the endpoint in its own ProxyStore home.
            keep_on = keep_on_uuid(endpoints, settings)
            return HostSharedEndpointConnector(
                endpoints.uuids, copies=copies_name(run_dir), keep_on=keep_on
            )
        except (EndpointConnectorError, OSError) as err:
            home = os.environ.get("PROXYSTORE_HOME", "the default ProxyStore home")
            raise StoreUnreachableError(
                f"endpoint store: no running endpoint of {settings.endpoints_file} in {home} "
                f"for the controller ({type(err).__name__})"
            ) from None

    def site_options(self, settings: StoreSettings) -> dict[str, dict[str, str]]:
        """Each executor's ``proxystore_home``, where the endpoints file gives one."""
        assert settings.endpoints_file is not None
        endpoints = read_endpoints_file(settings.endpoints_file)
        return {
            label: {"proxystore_home": info.home}
            for label, info in endpoints.endpoints.items()
            if info.home
        }


def keep_on_uuid(endpoints: EndpointsFile, settings: StoreSettings) -> str | None:
    """The UUID of the endpoint ``store.keep_on`` names (``None``: each putter's own)."""
    if settings.keep_on is None:
        return None
    info = endpoints.endpoints.get(settings.keep_on)
    if info is None:
        raise ConfigError(
            f"store.keep_on: {settings.keep_on!r} has no endpoint in {settings.endpoints_file} "
            f"({', '.join(endpoints.endpoints)})"
        )
    return info.uuid


class HostSharedEndpointConnector(EndpointConnector):
    """ProxyStore's ``EndpointConnector``: peers' objects read once per host, puts kept anywhere.

    Inside :func:`~proxyflox.stores.host_copies.shared_reads`, an object of another endpoint is
    read through this host's copies (:class:`~proxyflox.stores.host_copies.HostCopies`, in the
    ProxyStore home the connector found its endpoint in). With ``keep_on``, a put sends the
    object to that endpoint through this one (ProxyStore's own peer ``set``), so it crosses the
    putter's link while it is put; everything else is ProxyStore's.

    Args:
        endpoints: The endpoints' UUIDs, as for ``EndpointConnector``.
        proxystore_dir: The ProxyStore home (``None``: this process's own).
        copies: The run's copies (:func:`~proxyflox.stores.host_copies.copies_name`);
            ``None``: none kept.
        keep_on: The UUID of the endpoint every put goes to (``None``: this process's own).
    """

    def __init__(
        self,
        endpoints: Sequence[str | UUID],
        proxystore_dir: str | None = None,
        copies: str | None = None,
        keep_on: str | None = None,
    ) -> None:
        super().__init__(endpoints, proxystore_dir)
        self.copies = copies
        self.keep_on = keep_on
        home = proxystore_dir if proxystore_dir is not None else home_dir()
        self._copies = HostCopies(copies_directory(home, copies)) if copies else None

    def config(self) -> dict[str, Any]:
        """``EndpointConnector``'s config, the run's copies and where puts go."""
        return {**super().config(), "copies": self.copies, "keep_on": self.keep_on}

    def put(self, obj: BytesLike) -> EndpointKey:
        """Put into the ``keep_on`` endpoint (or this process's own, as ProxyStore does)."""
        if self.keep_on is None:
            return super().put(obj)
        key = EndpointKey(object_id=str(uuid.uuid4()), endpoint_id=self.keep_on)
        self.set(key, obj)
        return key

    def get(self, key: EndpointKey) -> BytesLike | None:
        """The object's bytes; a shared read of a peer's object goes through the copies."""
        peers = key.endpoint_id is not None and UUID(key.endpoint_id) != self.endpoint_uuid
        if self._copies is None or not peers or not reads_are_shared():
            return super().get(key)
        return self._copies.fetch_once(
            copy_name(key),
            functools.partial(self._get_bytes, key),
            is_alive=lambda name: self._still_stored(key_of_copy(name)),
        )

    def _get_bytes(self, key: EndpointKey) -> bytes | None:
        data = super().get(key)
        return None if data is None else bytes(data)

    def _still_stored(self, key: EndpointKey | None) -> bool:
        """Whether the object is still in its endpoint; unsure (its peer is unreachable): yes."""
        if key is None:
            return True  # not a copy's name: left to the run's end
        try:
            return self.exists(key)
        except EndpointConnectorError:
            return True


def copy_name(key: EndpointKey) -> str:
    """The file name of an object's copy: ``ENDPOINT.OBJECT``."""
    return f"{key.endpoint_id}.{key.object_id}"


def key_of_copy(name: str) -> EndpointKey | None:
    """The key a copy's name stands for (:func:`copy_name`); ``None`` for another name."""
    endpoint_id, _, object_id = name.partition(".")
    return EndpointKey(object_id, endpoint_id) if object_id else None


def check_object_size(endpoints: EndpointsFile, size_mb: int) -> None:
    """Every endpoint whose home is on this machine holds objects of ``size_mb`` MiB.

    An endpoint keeps the objects put through it; it refuses a larger one when it is put.
    ProxyStore's clients send any size (in chunks): the endpoint's config is the one limit.

    Raises:
        ConfigError: naming the first endpoint configured smaller.
    """
    homes = [endpoints.controller_home, *(info.home for info in endpoints.endpoints.values())]
    for home in dict.fromkeys(h for h in homes if h and Path(h).is_dir()):
        for config in get_configs(home):
            limit = config.storage.max_object_size
            if limit is not None and limit < size_mb * 2**20:
                raise ConfigError(
                    f"store.max_object_size_mb: {size_mb} MiB, but endpoint {config.name} in "
                    f"{home} holds objects up to {limit / 2**20:.0f} MiB (python -m "
                    f"proxyflox.endpoints up --max-object-size-mb {size_mb})"
                )


def use_proxystore_home(home: str | None) -> None:
    """Point this process's ProxyStore at ``home`` (before its first endpoint connector)."""
    if home:
        os.environ["PROXYSTORE_HOME"] = home
