"""Where weights live between apps: one module per backend, all as ProxyStore connectors.

The controller opens the run's :class:`~proxystore.store.base.Store` with :func:`open_store` and
hands its config (small, picklable) to every app; apps :func:`put_weights` and
:func:`resolve_weights` with it. With ``transfer: direct`` the config is ``None`` and weights
travel through Parsl itself (the benchmark baseline).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from proxystore.connectors.protocols import Connector
from proxystore.proxy import Proxy, get_factory
from proxystore.store import get_or_create_store
from proxystore.store.base import Store
from proxystore.store.config import StoreConfig
from proxystore.store.utils import get_key

from proxyflox.errors import StoreUnreachableError
from proxyflox.stores.access_log import AccessLogConnector
from proxyflox.stores.backend import StoreBackend
from proxyflox.stores.endpoint import EndpointBackend, use_proxystore_home
from proxyflox.stores.file import FileBackend
from proxyflox.stores.redis import RedisBackend
from proxyflox.stores.settings import StoreSettings
from proxyflox.weights import Weights

__all__ = [
    "BACKENDS",
    "StoreUnreachableError",
    "WeightsRef",
    "check_store",
    "enter_site",
    "evict_weights",
    "open_store",
    "put_weights",
    "resolve_weights",
]

#: ``store.backend`` name -> backend.
BACKENDS: dict[str, StoreBackend] = {
    "file": FileBackend(),
    "redis": RedisBackend(),
    "endpoint": EndpointBackend(),
}

#: What apps exchange as "weights": a proxy (store transfer) or the arrays themselves (direct).
WeightsRef = Proxy[Weights] | Weights


def check_store(settings: StoreSettings) -> None:
    """Fail fast, before a run starts, if the store cannot be reached.

    Raises:
        StoreUnreachableError: naming the backend and its address.
    """
    BACKENDS[settings.backend].check(settings)


def open_store(settings: StoreSettings, run_dir: Path, name: str) -> Store[Any]:
    """Open the run's store in the controller (it never puts or gets weights itself).

    ``cache_size=0``: a process that resolves a model keeps no second copy of it in the cache.
    """
    connector: Connector[Any] = BACKENDS[settings.backend].connector(settings, run_dir)
    if settings.access_log:
        connector = AccessLogConnector(connector, str(run_dir / "store-access.log"))
    return Store(name, connector, cache_size=0, populate_target=True, register=True)


class SiteHome(Protocol):
    """What :func:`enter_site` reads of a site's options."""

    @property
    def proxystore_home(self) -> str | None: ...


def enter_site(options: SiteHome) -> None:
    """Prepare this process for the store, as this site's options say (call first in an app)."""
    use_proxystore_home(options.proxystore_home)


def put_weights(weights: Weights, store_config: StoreConfig | None) -> tuple[WeightsRef, float]:
    """Put weights into the store (in the calling app's process); return the ref and seconds."""
    if store_config is None:
        return weights, 0.0
    start = time.perf_counter()
    store = get_or_create_store(store_config, register=True)
    proxy = store.proxy(weights)
    return proxy, time.perf_counter() - start


def resolve_weights(ref: WeightsRef) -> tuple[Weights, float]:
    """Fetch and deserialize the weights behind ``ref``; return them and the seconds it took.

    Calls the proxy's factory instead of resolving the proxy in place: a resolved proxy would
    keep its copy of the weights alive for as long as the proxy lives.
    """
    if not isinstance(ref, Proxy):
        return ref, 0.0
    start = time.perf_counter()
    weights: Weights = get_factory(ref)()
    return weights, time.perf_counter() - start


def evict_weights(store: Store[Any], ref: WeightsRef) -> None:
    """Delete the object behind a proxy from the store, without resolving it."""
    if isinstance(ref, Proxy):
        store.evict(get_key(ref))
