"""Where weights live between apps: one module per backend, all as ProxyStore connectors.

The controller opens the run's :class:`~proxystore.store.base.Store` with :func:`open_store`; the
init and aggregate apps open it from its config (:func:`open_app_store`), sites find it through
the proxy they receive (:func:`store_of`). Apps :func:`put_weights` and :func:`resolve_weights`.
With ``transfer: direct`` there is no store and weights travel through Parsl itself (the
baseline that shows what the store saves).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

from proxystore.connectors.protocols import Connector
from proxystore.proxy import Proxy, get_factory
from proxystore.serialize import SerializationError
from proxystore.store import get_or_create_store
from proxystore.store.base import Store
from proxystore.store.config import StoreConfig
from proxystore.store.exceptions import ProxyResolveMissingKeyError
from proxystore.store.factory import StoreFactory
from proxystore.store.utils import get_key

from proxyflox.codecs import UpdateEncoder, decode_weights, encode_weights
from proxyflox.errors import LayoutMismatchError, StoreUnreachableError, WeightsFormatError
from proxyflox.stores.access_log import AccessLogConnector
from proxyflox.stores.backend import StoreBackend
from proxyflox.stores.endpoint import EndpointBackend, use_proxystore_home
from proxyflox.stores.file import FileBackend, store_directory
from proxyflox.stores.host_copies import shared_reads
from proxyflox.stores.multi import MultiBackend, StoreRoute, use_store_route
from proxyflox.stores.redis import RedisBackend
from proxyflox.stores.settings import StoreSettings
from proxyflox.weights import Layout, Weights

__all__ = [
    "BACKENDS",
    "StoreRoute",
    "StoreUnreachableError",
    "WeightsRef",
    "check_store",
    "enter_site",
    "evict_weights",
    "file_store_directories",
    "keeps_host_copies",
    "key_of",
    "open_app_store",
    "open_store",
    "put_weights",
    "resolve_weights",
    "store_of",
]

#: The backends a ``multi`` store's connectors are made of.
SINGLE_BACKENDS: dict[str, StoreBackend] = {
    "file": FileBackend(),
    "redis": RedisBackend(),
    "endpoint": EndpointBackend(),
}
#: ``store.backend`` name -> backend.
BACKENDS: dict[str, StoreBackend] = {**SINGLE_BACKENDS, "multi": MultiBackend(SINGLE_BACKENDS)}

#: What apps exchange as "weights": a proxy or a bare store key (store transfer), or the arrays
#: themselves (direct transfer).
WeightsRef = Any


def check_store(settings: StoreSettings) -> None:
    """Fail fast, before a run starts, if the store cannot be reached.

    Raises:
        StoreUnreachableError: naming the backend and its address.
    """
    BACKENDS[settings.backend].check(settings)


def open_store(settings: StoreSettings, run_dir: Path, name: str) -> Store[Any]:
    """Open the run's store in the controller (it never puts or gets weights itself).

    ``cache_size=0``: a process that resolves a model keeps no second copy of it in the cache.
    ``populate_target=False``: a proxy never holds the weights it was made from. Nobody reads
    them through it (weights are read through the factory), and with threads the controller
    would keep every update of a round in memory; a populated proxy of a dict also keeps the
    putting app's frames alive (ProxyStore stores the ``TypeError`` of hashing its target).
    Its serializer and deserializer are the project's pickle-free ones (they travel in the
    store's config to every app): nothing read from this store is ever unpickled.
    """
    connector: Connector[Any] = BACKENDS[settings.backend].connector(settings, run_dir)
    if settings.access_log:
        connector = AccessLogConnector(connector, str(run_dir / "store-access.log"))
    return Store(
        name,
        connector,
        serializer=encode_weights,
        deserializer=decode_weights,
        cache_size=0,
        populate_target=False,
        register=True,
    )


def enter_site(proxystore_home: str | None, store_route: StoreRoute | None = None) -> None:
    """Prepare this process for the store (call first in an app).

    That is this executor's endpoint home and, in a ``multi`` store, its route.
    """
    use_proxystore_home(proxystore_home)
    use_store_route(store_route)


def file_store_directories(settings: StoreSettings, run_dir: Path) -> list[Path]:
    """The directories of the run's file stores: the store's own, or its file connectors'."""
    parts = [settings] if settings.backend == "file" else list(settings.connectors.values())
    return [store_directory(part, run_dir) for part in parts if part.backend == "file"]


def keeps_host_copies(settings: StoreSettings) -> bool:
    """Whether hosts keep copies of what they read from peer endpoints (see ``host_copies``).

    With endpoints only: a file store is shared per host already, Redis is central.
    """
    parts = [settings] if settings.backend != "multi" else list(settings.connectors.values())
    return any(part.backend == "endpoint" for part in parts)


def open_app_store(store_config: StoreConfig | None) -> Store[Any] | None:
    """The run's store inside an app, from the config its task carries (``None``: direct)."""
    return None if store_config is None else get_or_create_store(store_config, register=True)


def store_of(ref: WeightsRef) -> Store[Any] | None:
    """The store a proxy's object lives in, from the config inside the proxy.

    ``None``: the weights travel directly. A site puts its update where its global model came
    from, so the store config travels once, inside the proxy.
    """
    if not isinstance(ref, Proxy):
        return None
    factory = cast(StoreFactory[Any, Weights], get_factory(ref))
    return factory.get_store()


def put_weights(
    weights: Weights, store: Store[Any] | None, encoder: UpdateEncoder | None = None
) -> tuple[WeightsRef, float]:
    """Put weights into the store (in the calling app's process); return the ref and seconds.

    ``encoder`` serializes them (a codec); without one, every array's own bytes. Either way the
    project's pickle-free layout, whose deserializer travels in the proxy: whoever resolves it
    decodes without being told how.
    """
    if store is None:
        return weights, 0.0
    start = time.perf_counter()
    proxy = store.proxy(weights, serializer=encoder or encode_weights, deserializer=decode_weights)
    return proxy, time.perf_counter() - start


def resolve_weights(
    ref: WeightsRef,
    store: Store[Any] | None = None,
    layout: Layout | None = None,
    *,
    shared: bool = False,
) -> tuple[Weights, float]:
    """Fetch and deserialize the weights behind a proxy or a key; return them and the seconds.

    A proxy is read through its factory instead of being resolved in place: a resolved proxy
    would keep its copy of the weights alive for as long as the proxy lives. A bare key (what
    the aggregator gets) is read from ``store``; its bytes say how they were encoded, and with
    ``layout`` arrays other than the model's are refused before they are decoded.
    ``shared``: other workers of this host read the same object (the global model), so a peer
    endpoint's object crosses to the host once (:mod:`proxyflox.stores.host_copies`).

    Raises:
        WeightsFormatError: the stored bytes are not a ProxyFlox weights object.
        LayoutMismatchError: they are, but not of ``layout``.
        ProxyResolveMissingKeyError: nothing is stored under the key.
    """
    start = time.perf_counter()
    if not isinstance(ref, Proxy) and isinstance(ref, dict):  # Proxy first: a proxy of a dict
        # passes isinstance(proxy, dict), resolving itself to answer
        return ref, 0.0
    try:
        if isinstance(ref, Proxy):
            with shared_reads() if shared else nullcontext():
                weights: Weights = get_factory(ref)()
        else:
            if store is None:
                raise ValueError(f"a store key needs its store to be read: {ref!r}")
            fetched = store.get(ref, deserializer=_decoder(layout), default=_MISSING)
            if fetched is _MISSING:
                raise ProxyResolveMissingKeyError(ref, type(store), store.name)
            weights = cast(Weights, fetched)
    except SerializationError as err:  # ProxyStore's wrapper: the decoder's own error says why
        if isinstance(err.__cause__, WeightsFormatError | LayoutMismatchError):
            raise err.__cause__ from None
        raise
    return weights, time.perf_counter() - start


def _decoder(layout: Layout | None) -> Callable[[Any], Weights]:
    """The deserializer of one read (a function: ProxyStore names it in its errors)."""

    def decode_with_layout(data: Any) -> Weights:
        return decode_weights(data, layout)

    return decode_weights if layout is None else decode_with_layout


def key_of(ref: WeightsRef) -> WeightsRef:
    """The store key behind a proxy, read without resolving it.

    The arrays of direct transfer pass through.
    """
    return get_key(ref) if isinstance(ref, Proxy) else ref


def evict_weights(store: Store[Any], ref: WeightsRef) -> None:
    """Delete the object behind a proxy or key from the store, without resolving it."""
    if isinstance(ref, Proxy) or not isinstance(ref, dict):
        store.evict(key_of(ref))


_MISSING = object()
