"""Real servers for store tests, on loopback: redis-server, and a ProxyStore relay with endpoints.

Each starts on free ports and is stopped again, also when a test fails. A missing server binary is
a test failure saying what to install, never a silent skip.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from proxyflox.endpoints import EndpointOptions, down, free_port, up


@contextmanager
def redis_server(password: str | None = None, port: int | None = None) -> Iterator[int]:
    """A throwaway redis-server on 127.0.0.1 (no persistence); yields its port."""
    port = port or free_port("127.0.0.1")
    process = subprocess.Popen(
        redis_command(port, password=password), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_redis(process, "127.0.0.1", port, password)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def redis_command(port: int, host: str = "127.0.0.1", password: str | None = None) -> list[str]:
    """A redis-server listening on ``host:port`` only, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: apt-get install redis-server (.ci/run does)"
    # Protected mode refuses every client but loopback ones when there is no password; a server
    # bound elsewhere is one in a network lab, which only the lab's own namespaces reach.
    protected = "yes" if host == "127.0.0.1" else "no"
    command = [binary, "--port", str(port), "--bind", host, "--save", "",
               "--appendonly", "no", "--protected-mode", protected]  # fmt: skip
    if password:
        command += ["--requirepass", password]
    return command


def wait_for_redis(
    process: subprocess.Popen[bytes], host: str, port: int, password: str | None = None
) -> None:
    """Wait until the server started as ``process`` answers a ping (20 s at most)."""
    client = redis.StrictRedis(host=host, port=port, password=password)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start within 20 s"
            assert process.poll() is None, "redis-server exited at start"
            time.sleep(0.1)


def redis_keys(
    port: int, password: str | None = None, host: str = "127.0.0.1"
) -> list[bytes | str]:
    """Every key the server holds."""
    return list(redis.StrictRedis(host=host, port=port, password=password).keys("*"))


@contextmanager
def local_endpoints(
    directory: Path, labels: list[str], options: EndpointOptions | None = None
) -> Iterator[Path]:
    """A relay and one endpoint per label on 127.0.0.1; yields the endpoints file."""
    path = up(directory, labels, options=options or EndpointOptions())
    try:
        yield path
    finally:
        down(directory)
