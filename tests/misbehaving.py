"""Test-only app bodies that misbehave in a real run, and a crafted object for the store.

Parsl workers import this module by name (the tests put the project root on their
``PYTHONPATH``). The train bodies run the real one, then make one site's update bad the way a
broken site, or someone with write access to the store, would.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
from proxystore.serialize import serialize as proxystore_serialize
from proxystore.store.utils import get_key

from proxyflox.apps import train_site
from proxyflox.messages import TrainResult
from proxyflox.stores import put_weights, resolve_weights, store_of

#: The site whose update goes bad.
BAD_SITE = 1
#: Where the crafted pickle would write its marker file (set by the test, read in the worker).
MARKER_ENV = "PROXYFLOX_TEST_MARKER"
#: Where every site also keeps a copy of the update it really made (``round-R-site-S.npz``).
UPDATES_ENV = "PROXYFLOX_TEST_UPDATES"


class WritesMarker:
    """Unpickled, it creates a file: what a pickle under an update's key makes its reader do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return Path.touch, (Path(self.path),)


def crafted_pickle(marker: str) -> bytes:
    """ProxyStore's own format of :class:`WritesMarker` (what its default deserializer reads)."""
    return proxystore_serialize(WritesMarker(marker))


def train_sending_a_wrong_shape(*args: Any) -> TrainResult:
    """The real train body; site :data:`BAD_SITE` then sends its model with one array cut."""
    result: TrainResult = train_site(*args)
    weights, _ = resolve_weights(result.update)
    round_number = args[2]
    kept = Path(os.environ[UPDATES_ENV]) / f"round-{round_number}-site-{result.site}.npz"
    np.savez(kept, **cast(dict[str, Any], weights))
    if result.site != BAD_SITE:
        return result
    store = store_of(result.update)
    name = next(name for name, array in weights.items() if array.ndim == 2)
    weights[name] = weights[name][:, : weights[name].shape[1] // 2].copy()
    bad, _ = put_weights(weights, store)
    assert store is not None
    store.evict(get_key(result.update))
    return dataclasses.replace(result, update=bad)


def train_leaving_a_pickle(*args: Any) -> TrainResult:
    """The real train body; site :data:`BAD_SITE`'s stored update is then overwritten, under
    its own key, with :func:`crafted_pickle` (as whoever can write to the store could)."""
    result: TrainResult = train_site(*args)
    if result.site == BAD_SITE:
        store = store_of(result.update)
        assert store is not None
        store.connector.set(get_key(result.update), crafted_pickle(os.environ[MARKER_ENV]))
    return result
