"""A connector wrapper that logs every read and write with the process id that made it.

It proves the data path: with it, a run shows which processes read model weights (the sites and
the aggregator) and that the controller never does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from proxystore.connectors.protocols import Connector
from proxystore.serialize import BytesLike
from proxystore.store.config import ConnectorConfig
from proxystore.utils.imports import get_object_path


class AccessLogConnector:
    """Wraps any connector; appends ``pid<TAB>op<TAB>key`` lines to ``log_path``.

    Args:
        inner: The connector that stores the bytes, or its ``ConnectorConfig`` as a dict
            (ProxyStore rebuilds connectors in other processes as ``cls(**config())``).
        log_path: File that every process appends its lines to.
    """

    def __init__(self, inner: Connector[Any] | Mapping[str, Any], log_path: str) -> None:
        if isinstance(inner, Mapping):
            inner = ConnectorConfig(**inner).get_connector()
        self.inner: Connector[Any] = inner
        self.log_path = log_path

    def _log(self, op: str, key: Any) -> None:
        # One short O_APPEND write per line: lines from concurrent processes never interleave.
        with open(self.log_path, "a") as log:
            log.write(f"{os.getpid()}\t{op}\t{key}\n")

    def close(self) -> None:
        """Close the inner connector."""
        self.inner.close()

    def config(self) -> dict[str, Any]:
        """The inner connector's config (as a dict) and the log path, for other processes."""
        return {
            "inner": ConnectorConfig(
                kind=get_object_path(type(self.inner)), options=self.inner.config()
            ).model_dump(),
            "log_path": self.log_path,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AccessLogConnector:
        """Rebuild the wrapper, and the inner connector, from :meth:`config`."""
        return cls(**config)

    def evict(self, key: Any) -> None:
        """Log, then evict the object."""
        self._log("evict", key)
        self.inner.evict(key)

    def exists(self, key: Any) -> bool:
        """Whether the inner connector holds ``key`` (not logged)."""
        return self.inner.exists(key)

    def get(self, key: Any) -> BytesLike | None:
        """Log, then get the object's bytes."""
        self._log("get", key)
        return self.inner.get(key)

    def get_batch(self, keys: Sequence[Any]) -> list[BytesLike | None]:
        """Log each key, then get the objects' bytes."""
        for key in keys:
            self._log("get", key)
        return self.inner.get_batch(keys)

    def put(self, obj: BytesLike) -> Any:
        """Put the bytes, then log their new key."""
        key = self.inner.put(obj)
        self._log("put", key)
        return key

    def put_batch(self, objs: Sequence[BytesLike]) -> list[Any]:
        """Put the objects, then log each new key."""
        keys = self.inner.put_batch(objs)
        for key in keys:
            self._log("put", key)
        return keys
