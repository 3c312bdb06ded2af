"""ProxyStore endpoints on loopback: start-up, the first peer fetch, peer throughput, side by side
for the settings ``python -m proxyflox.endpoints up`` has, and a profile of where a peer transfer
spends its time.

    python -m benchmarks.endpoints [--mb 64] [--reps 3] [--profile DIR]

Per configuration (ProxyStore's default ICE servers, i.e. public STUN servers, against none; one
data channel per peer connection against four) it starts a relay and two endpoints with
:func:`proxyflox.endpoints.up` and measures: the seconds ``up`` takes (configure, start, until
both listen), the first peer ``get`` of a 1 KiB object (the peer connection's set-up: signalling
through the relay and ICE), and the MB/s of a ``--mb`` MB object fetched from the other endpoint
(median of ``--reps``). ``--profile DIR`` also runs both endpoints in the foreground under
cProfile (ProxyStore's own ``serve``, on asyncio's loop) during a ``--mb`` transfer and prints
the top functions of each, by own time.
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from proxystore.connectors.endpoint import EndpointConnector

from benchmarks.common import median, print_machine
from proxyflox.endpoints import (
    PROXYSTORE_STUN,
    EndpointOptions,
    down,
    endpoint_command,
    free_port,
    relay_command,
    start_endpoint,
    up,
    wait_for_port,
)
from proxyflox.stores.endpoint import read_endpoints_file

CONFIGURATIONS: dict[str, EndpointOptions] = {
    "proxystore default STUN, 1 channel": EndpointOptions(ice_servers=PROXYSTORE_STUN),
    "no STUN, 1 channel": EndpointOptions(),
    "no STUN, 4 channels": EndpointOptions(peer_channels=4),
}
LABELS = ["owner", "reader"]


def measure(directory: Path, size_mb: int, reps: int, options: EndpointOptions) -> dict[str, float]:
    """Start-up seconds, first-fetch seconds and MB/s of one configuration."""
    start = time.perf_counter()
    path = up(directory, LABELS, options=replace(options, max_object_size_mb=size_mb + 1))
    startup = time.perf_counter() - start
    try:
        endpoints = read_endpoints_file(path)
        homes = {label: endpoints.endpoints[label].home for label in LABELS}
        owner = EndpointConnector(endpoints.uuids, proxystore_dir=homes["owner"])
        reader = EndpointConnector(endpoints.uuids, proxystore_dir=homes["reader"])
        try:
            small = owner.put(b"x" * 1024)
            start = time.perf_counter()
            assert reader.get(small) is not None
            first = time.perf_counter() - start
            data = os.urandom(size_mb * 10**6)
            key = owner.put(data)
            rates = []
            for _ in range(reps):
                start = time.perf_counter()
                fetched = reader.get(key)
                rates.append(size_mb / (time.perf_counter() - start))
                assert fetched is not None and len(fetched) == len(data)
            owner.evict(key)
            owner.evict(small)
        finally:
            owner.close()
            reader.close()
    finally:
        down(directory)
    return {"startup_s": startup, "first_get_s": first, "peer_MB_s": median(rates)}


PROFILED = """
import cProfile, sys
from proxystore.endpoint.config import read_config
from proxystore.endpoint.serve import serve
profiler = cProfile.Profile()
profiler.enable()
try:
    serve(read_config(sys.argv[1]), use_uvloop=False)  # asyncio's loop: its frames profiled
finally:
    profiler.disable()
    profiler.dump_stats(sys.argv[2])
"""


def profile(directory: Path, size_mb: int, out: Path) -> None:
    """Both endpoints under cProfile in the foreground during one peer fetch; print their tops."""
    directory.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    relay_port = free_port("127.0.0.1")
    relay = subprocess.Popen(
        relay_command("127.0.0.1", relay_port, directory / "relay"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        wait_for_port("127.0.0.1", relay_port, 30, "proxystore-relay")
        uuids = {}
        for label in LABELS:
            home = directory / label
            port = free_port("127.0.0.1")
            uuids[label] = start_endpoint(
                home, label, "127.0.0.1", port, f"ws://127.0.0.1:{relay_port}",
                EndpointOptions(max_object_size_mb=size_mb + 1),
            )  # fmt: skip
            # Restarted in the foreground under the profiler (the detached one stopped first).
            endpoint_command(home, "stop", label)
            processes[label] = subprocess.Popen(
                [sys.executable, "-c", PROFILED, str(home / label), str(out / f"{label}.prof")],
                env={**os.environ, "PROXYSTORE_HOME": str(home)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_for_port("127.0.0.1", port, 60, f"endpoint {label}")
        ids = list(uuids.values())
        owner = EndpointConnector(ids, proxystore_dir=str(directory / "owner"))
        reader = EndpointConnector(ids, proxystore_dir=str(directory / "reader"))
        assert reader.get(owner.put(b"warm-up")) is not None  # the peer connection, once
        key = owner.put(os.urandom(size_mb * 10**6))
        start = time.perf_counter()
        assert reader.get(key) is not None
        seconds = time.perf_counter() - start
        owner.close()
        reader.close()
        print(f"\nprofiled fetch: {size_mb} MB in {seconds:.1f}s ({size_mb / seconds:.1f} MB/s)")
    finally:
        for process in processes.values():
            process.send_signal(signal.SIGINT)  # uvicorn stops cleanly: the profile is written
        for process in processes.values():
            process.wait(60)
        relay.terminate()
        relay.wait(30)
    for label in LABELS:
        role = "sends" if label == "owner" else "receives"
        print(f"\n--- {label} endpoint ({role}), top by own time")
        stats = pstats.Stats(str(out / f"{label}.prof"))
        stats.sort_stats("tottime").print_stats(12)


def main(argv: list[str] | None = None) -> int:
    """Measure every configuration; optionally profile one transfer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="size of the fetched object (MB)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="also profile both endpoints, into DIR")
    args = parser.parse_args(argv)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="bench-endpoints-") as tmp:
        print(f"{'configuration':38s} {'up (s)':>8s} {'first get (s)':>14s} {'peer MB/s':>10s}")
        for i, (name, options) in enumerate(CONFIGURATIONS.items()):
            row = measure(Path(tmp) / f"eps-{i}", args.mb, args.reps, options)
            print(
                f"{name:38s} {row['startup_s']:8.2f} {row['first_get_s']:14.2f} "
                f"{row['peer_MB_s']:10.2f}",
                flush=True,
            )
        if args.profile:
            profile(Path(tmp) / "profiled", args.mb, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
