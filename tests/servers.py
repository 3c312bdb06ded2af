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

from proxyflox.endpoints import down, free_port, up


@contextmanager
def redis_server(password: str | None = None, port: int | None = None) -> Iterator[int]:
    """A throwaway redis-server on 127.0.0.1 (no persistence); yields its port."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: apt-get install redis-server (.ci/run does)"
    port = port or free_port("127.0.0.1")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--protected-mode", "yes"]  # fmt: skip
    if password:
        command += ["--requirepass", password]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.StrictRedis(host="127.0.0.1", port=port, password=password)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start within 20 s"
                assert process.poll() is None, "redis-server exited at start"
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def redis_keys(port: int, password: str | None = None) -> list[bytes | str]:
    """Every key the server holds."""
    return list(redis.StrictRedis(host="127.0.0.1", port=port, password=password).keys("*"))


@contextmanager
def local_endpoints(directory: Path, labels: list[str]) -> Iterator[Path]:
    """A relay and one endpoint per label on 127.0.0.1; yields the endpoints file."""
    path = up(directory, labels)
    try:
        yield path
    finally:
        down(directory)
