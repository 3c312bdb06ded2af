"""A process that tries to pass for a Parsl worker pool, to show what an interchange accepts.

    python -m tests.infra.rogue_worker URL MARKER SECONDS [SERVER_PUBLIC_KEY]

It connects to the interchange's worker port at ``URL`` twice at once: with a plain ZMQ DEALER
socket (no key at all) and, when the interchange's public key is given (it is no secret), with
a CurveZMQ client socket holding a key pair made here, which the run never authorized. On each
it sends what a worker pool sends first, a connection probe and a registration; the
registration carries an object whose unpickling creates the directory ``MARKER``, so whether
the other side deserialized it shows on disk. It then listens for ``SECONDS`` and prints one
JSON line per socket: whether the probe was answered and the ids of the tasks it was sent.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import sys
import time
from typing import Any

import zmq
from parsl.version import VERSION as PARSL_VERSION


class CreatesMarker:
    """Unpickling this creates a directory: the stand-in for any code a pickle can run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.path,)


def registration(marker: str, uid: str) -> bytes:
    """What a worker pool registers with (versions that pass the interchange's check)."""
    python = ".".join(str(part) for part in sys.version_info[:3])
    message = {
        "type": "registration",
        "parsl_v": PARSL_VERSION,
        "python_v": python,
        "worker_count": 1,
        "uid": uid,
        "block_id": "0",
        "start_time": time.time(),
        "prefetch_capacity": 0,
        "max_capacity": 1,
        "os": platform.system(),
        "hostname": platform.node(),
        "dir": os.getcwd(),
        "note": CreatesMarker(marker),
    }
    return pickle.dumps(message)


def main(argv: list[str]) -> None:
    url, marker, seconds = argv[0], argv[1], float(argv[2])
    context = zmq.Context()
    sockets: dict[str, zmq.Socket[bytes]] = {"plain": context.socket(zmq.DEALER)}
    if len(argv) > 3:
        curve = context.socket(zmq.DEALER)
        public, secret = zmq.curve_keypair()  # never authorized by the run
        curve.setsockopt(zmq.CURVE_PUBLICKEY, public)
        curve.setsockopt(zmq.CURVE_SECRETKEY, secret)
        curve.setsockopt(zmq.CURVE_SERVERKEY, argv[3].encode())
        sockets["curve"] = curve
    poller = zmq.Poller()
    seen: dict[str, dict[str, Any]] = {}
    for kind, sock in sockets.items():
        sock.setsockopt(zmq.IDENTITY, f"rogue-{kind}".encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(url)
        sock.send(pickle.dumps({"type": "connection_probe"}))
        sock.send(registration(marker, f"rogue-{kind}"))
        poller.register(sock, zmq.POLLIN)
        seen[kind] = {"probe_answered": False, "tasks": []}
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(timeout=int(left * 1000) + 1):
            kind = next(k for k, s in sockets.items() if s is sock)
            reply = sock.recv()
            if reply == b"":
                seen[kind]["probe_answered"] = True
                continue
            tasks = pickle.loads(reply)  # what an interchange sends a worker: a list of tasks
            if isinstance(tasks, list):
                seen[kind]["tasks"] += [task["task_id"] for task in tasks]
    for kind, outcome in seen.items():
        print(json.dumps({"socket": kind, **outcome}), flush=True)
    context.destroy(linger=0)


if __name__ == "__main__":
    main(sys.argv[1:])
