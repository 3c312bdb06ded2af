"""Redis store: a redis-server every site can reach.

The password, if any, is read from the environment in each process and never enters settings,
proxies or logs.
"""

from __future__ import annotations

import os
from pathlib import Path

import redis
from proxystore.connectors.redis import RedisConnector

from proxyflox.errors import StoreUnreachableError
from proxyflox.stores.settings import StoreSettings

#: The only place a Redis password is read from (it never enters settings, logs or proxies).
REDIS_PASSWORD_ENV = "PROXYFLOX_REDIS_PASSWORD"
#: Seconds one command may take to send or read. redis-py's default (5 s, for the whole of a
#: value's send) fails any put of more than 5 s of a link: 45 MB takes 14 s over 25 Mbit WiFi.
SOCKET_TIMEOUT_SECONDS = 600
#: Seconds to reach the server.
CONNECT_TIMEOUT = 5


class PasswordRedisConnector(RedisConnector):
    """ProxyStore's Redis connector, authenticating with the password from the environment.

    Its ``config()`` (which travels inside every proxy) holds host and port only. Its client
    has no socket timeout: redis-py's default (5 s) bounds a whole ``SET``'s ``sendall``, so a
    45 MB update from one of four sites sharing a 100 Mbit uplink failed and was sent again.
    """

    def __init__(self, hostname: str, port: int, clear: bool = False) -> None:
        super().__init__(hostname, port, clear=clear)
        self._redis_client.close()
        self._redis_client = redis.StrictRedis(
            host=hostname,
            port=port,
            password=os.environ.get(REDIS_PASSWORD_ENV) or None,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_keepalive=True,  # a vanished server still ends a read, in the kernel's time
        )


class RedisBackend:
    """Objects as keys of a Redis server."""

    def describe(self, settings: StoreSettings, run_dir: Path | None) -> str:
        """``redis at HOST:PORT``."""
        return f"redis at {settings.host}:{settings.port}"

    def check(self, settings: StoreSettings) -> None:
        """Ping the server, with the password from the environment if one is set."""
        client = redis.StrictRedis(
            host=settings.host,
            port=settings.port,
            password=os.environ.get(REDIS_PASSWORD_ENV) or None,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=CONNECT_TIMEOUT,
        )
        where = self.describe(settings, None)
        problem = "holds a wrong one" if os.environ.get(REDIS_PASSWORD_ENV) else "is not set"
        try:
            client.ping()
        except redis.exceptions.AuthenticationError:  # NOAUTH, or a wrong password
            raise StoreUnreachableError(
                f"{where} refused to authenticate: {REDIS_PASSWORD_ENV} {problem} (the only "
                "place the Redis password is read from)"
            ) from None
        except redis.exceptions.RedisError as err:
            # The exception text names host and port, never the password.
            raise StoreUnreachableError(f"{where} is unreachable: {err}") from None
        finally:
            client.close()

    def connector(self, settings: StoreSettings, run_dir: Path) -> PasswordRedisConnector:
        """A connector on the server; its config carries no password."""
        return PasswordRedisConnector(settings.host, settings.port)

    def site_options(self, settings: StoreSettings) -> dict[str, dict[str, str]]:
        """No per-site options: every site reaches the same server."""
        return {}
