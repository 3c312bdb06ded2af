"""The small interface every store backend implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from proxystore.connectors.protocols import Connector

from proxyflox.stores.settings import StoreSettings


class StoreBackend(Protocol):
    """One kind of store: how to describe, check and connect to it."""

    def describe(self, settings: StoreSettings, run_dir: Path | None) -> str:
        """Backend and address for messages, e.g. ``redis at 10.0.0.5:6379``."""
        ...

    def check(self, settings: StoreSettings) -> None:
        """Raise :class:`StoreUnreachableError` if the store cannot be used right now."""
        ...

    def connector(self, settings: StoreSettings, run_dir: Path) -> Connector[Any]:
        """The controller's connector (its config is what every app rebuilds theirs from)."""
        ...

    def site_options(self, settings: StoreSettings) -> dict[str, dict[str, str]]:
        """Per-executor site options the backend needs, by label.

        For example each site's ``{"proxystore_home": ...}``.
        """
        ...
