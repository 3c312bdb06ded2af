"""The ``store`` section of an experiment: its own fields and checks.

The backend's name is checked against :data:`proxyflox.stores.BACKENDS` by the experiment
settings, which nest this section (the backends themselves import it).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, model_validator

from proxyflox.errors import ConfigError
from proxyflox.schema import Bool, Count, Int, Maybe, Must, Names, Settings, Str

#: What a ``store.connectors`` name may be: it tags the connector's policy and names it in keys.
CONNECTOR_NAME = re.compile(r"[A-Za-z0-9_-]+")


class StoreSettings(Settings):
    """Where model weights live while they travel between apps."""

    backend: Str = "file"
    #: ``file``: the directory; default ``store/`` inside the run directory.
    directory: Maybe[Str] = None
    #: ``redis``: server address as every site can reach it (never ``localhost`` across
    #: machines); the password comes only from the environment variable REDIS_PASSWORD_ENV.
    host: Str = "127.0.0.1"
    port: Annotated[Int, Field(ge=1, le=65535), Must("a TCP port (1-65535)")] = 6379
    #: ``endpoint``: the endpoints file written by ``python -m proxyflox.endpoints up`` (or by
    #: hand) listing every endpoint's UUID and, per executor label, its ProxyStore home.
    endpoints_file: Maybe[Str] = None
    #: ``endpoint``: the largest object (MiB) the endpoints must hold (``null``: ProxyStore's
    #: 100 MB); ``python -m proxyflox.endpoints up --max-object-size-mb`` configures them so.
    max_object_size_mb: Maybe[Count] = None
    #: ``endpoint``: the executor label (in the endpoints file) whose endpoint keeps every
    #: object, e.g. ``aggregator``: a site's update then crosses its link as it is put, while
    #: the other sites put theirs, instead of when the aggregator reads it, one update after
    #: another. ``null``: each object stays on the endpoint of the executor that put it.
    keep_on: Maybe[Str] = None
    #: ``multi``: named connectors, each the settings of one backend (``file``, ``redis``,
    #: ``endpoint``), e.g. ``{lan: {backend: redis, host: 10.0.0.5}, wan: {backend: endpoint,
    #: endpoints_file: eps.yaml}}``.
    connectors: dict[Str, StoreSettings] = Field(default_factory=dict)
    #: ``multi``: the connector every executor puts into, unless its
    #: ``site_options.LABEL.store_put`` names another.
    put: Maybe[Str] = None
    #: ``multi``: the connectors every executor can reach (``null``: all), unless its
    #: ``site_options.LABEL.store_read`` says otherwise; a run whose objects some reader
    #: cannot reach is refused.
    read: Maybe[Names] = None
    #: Record every store read/write with its process id in ``store-access.log`` (auditing).
    access_log: Bool = False

    @model_validator(mode="after")
    def _no_password_in_the_address(self) -> StoreSettings:
        # redis://user:secret@host or user:secret@host: refused without echoing the value.
        if "@" in self.host or "://" in self.host:
            raise ConfigError(
                "store.host: must be a host name or address (the value given is not shown: it "
                "looks like it holds credentials); a Redis password belongs in "
                "PROXYFLOX_REDIS_PASSWORD"
            )
        return self

    @model_validator(mode="after")
    def _endpoint_needs_its_file(self) -> StoreSettings:
        if self.backend == "endpoint" and not self.endpoints_file:
            raise ConfigError(
                "store.endpoints_file: required with store.backend endpoint "
                "(python -m proxyflox.endpoints up writes one)"
            )
        return self

    @model_validator(mode="after")
    def _multi_needs_its_connectors(self) -> StoreSettings:
        if self.backend != "multi":
            return self
        if not self.connectors:
            raise ConfigError(
                "store.connectors: required with store.backend multi (name -> a backend's "
                "settings, e.g. lan: {backend: redis, host: 10.0.0.5})"
            )
        for name, connector in self.connectors.items():
            if not CONNECTOR_NAME.fullmatch(name):
                raise ConfigError(
                    f"store.connectors: name {name!r} must be letters, digits, '-' or '_'"
                )
            if connector.backend == "multi" or connector.connectors:
                raise ConfigError(
                    f"store.connectors.{name}.backend: must be one backend (file, redis or "
                    "endpoint), not another multi"
                )
        if self.put is None:
            raise ConfigError(
                f"store.put: required with store.backend multi: the connector executors put "
                f"into unless their site_options.LABEL.store_put says (one of "
                f"{', '.join(self.connectors)})"
            )
        return self
