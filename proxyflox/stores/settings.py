"""The ``store`` section of an experiment: its own fields and checks.

The backend's name is checked against :data:`proxyflox.stores.BACKENDS` by the experiment
settings, which nest this section (the backends themselves import it).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from proxyflox.errors import ConfigError
from proxyflox.schema import Bool, Int, Maybe, Must, Settings, Str


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
