"""Put and resolve cost of the project's weights format against ProxyStore's pickle, at 45 MB.

    python -m benchmarks.wire [--model resnet18] [--reps 7] [--redis]

Side by side, interleaved, in this process: ResNet-18's weights (44.8 MB, 122 arrays) through

- ``pickle``: ProxyStore's default serializer and deserializer (what codec ``none`` used before),
  on ProxyStore's own ``FileConnector``;
- ``pfxw``: the project's ``put_weights``/``resolve_weights`` (``encode_weights``,
  ``decode_weights``; arrays read as views of the bytes), on the project's file connector (which
  reads into a buffer of its own);

into a file store in a fresh temporary directory (the page cache holds the files: this is CPU and
memory-copy cost, no disk), and with ``--redis`` a throwaway redis-server on loopback. Each
repetition puts the weights (serialize + write) and resolves them by key (read + deserialize, and
touching every array once by summing it, so that lazily mapped memory is paid for), and measures
serialization alone. Medians over the repetitions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from proxystore.connectors.file import FileConnector
from proxystore.connectors.redis import RedisConnector
from proxystore.serialize import deserialize, serialize
from proxystore.store.base import Store

from benchmarks.common import DOCS, median, model_weights, print_machine, write_csv
from proxyflox.codecs import decode_weights, encode_weights
from proxyflox.stores.file import file_connector
from proxyflox.weights import Weights, weights_nbytes

FORMATS = ("pickle", "pfxw")


def touch(weights: Weights) -> float:
    """Read every array once (what using the weights costs at least)."""
    return float(sum(float(np.sum(array, dtype=np.float64)) for array in weights.values()))


def put_and_resolve(store: Store[Any], weights: Weights, kind: str) -> tuple[float, float]:
    """Seconds to put ``weights`` and to resolve them again by key (in ``kind``'s format)."""
    serializer, deserializer = (
        (serialize, deserialize) if kind == "pickle" else (encode_weights, decode_weights)
    )
    start = time.perf_counter()
    key = store.put(weights, serializer=serializer)
    put = time.perf_counter() - start
    start = time.perf_counter()
    read = store.get(key, deserializer=deserializer)
    assert read is not None, "the object was just put"
    touch(read)
    resolve = time.perf_counter() - start
    del read
    store.evict(key)
    return put, resolve


def serialize_only(weights: Weights, kind: str) -> tuple[float, float, int]:
    """Seconds to serialize and to deserialize in memory, and the serialized size."""
    serializer: Callable[[Any], Any] = serialize if kind == "pickle" else encode_weights
    deserializer: Callable[[Any], Any] = deserialize if kind == "pickle" else decode_weights
    start = time.perf_counter()
    data = serializer(weights)
    middle = time.perf_counter()
    touch(deserializer(data))
    return middle - start, time.perf_counter() - middle, len(data)


@contextmanager
def stores(tmp: Path, redis_port: int | None) -> Iterator[dict[str, dict[str, Store[Any]]]]:
    """Per backend, the store each format is read from (ProxyStore's connector for pickle)."""
    made: dict[str, dict[str, Store[Any]]] = {
        "file": {
            "pickle": Store("bench-wire-pickle", FileConnector(str(tmp / "pickle")), cache_size=0),
            "pfxw": Store("bench-wire-pfxw", file_connector(tmp / "pfxw"), cache_size=0),
        }
    }
    if redis_port is not None:
        connector = RedisConnector("127.0.0.1", redis_port)
        shared = Store("bench-wire-redis", connector, cache_size=0)
        made["redis"] = {"pickle": shared, "pfxw": shared}
    try:
        yield made
    finally:
        for by_format in made.values():
            for store in set(by_format.values()):
                store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--redis", action="store_true", help="also through a redis-server")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    print_machine()
    weights = model_weights(args.model)
    print(f"{args.model}: {weights_nbytes(weights) / 1e6:.1f} MB in {len(weights)} arrays")
    tmp = Path(tempfile.mkdtemp(prefix="proxyflox-bench-wire-"))
    rows: list[dict[str, Any]] = []
    try:
        with redis_if(args.redis) as port, stores(tmp, port) as by_backend:
            for rep in range(args.reps + 1):  # the first is a warm-up
                for kind in FORMATS:
                    encode, decode, size = serialize_only(weights, kind)
                    row: dict[str, Any] = {"rep": rep, "format": kind, "bytes": size}
                    row |= {"serialize_seconds": encode, "deserialize_seconds": decode}
                    for backend, by_format in by_backend.items():
                        put, resolve = put_and_resolve(by_format[kind], weights, kind)
                        row |= {
                            f"{backend}_put_seconds": put,
                            f"{backend}_resolve_seconds": resolve,
                        }
                    if rep:
                        rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    columns = [c for c in rows[0] if c.endswith("_seconds")]
    summary = [
        {"format": kind, "bytes": next(r["bytes"] for r in rows if r["format"] == kind)}
        | {c: median([r[c] for r in rows if r["format"] == kind]) for c in columns}
        for kind in FORMATS
    ]
    print(f"\nmedians of {args.reps} interleaved repetitions, ms:")
    print(f"{'':24}" + "".join(f"{kind:>10}" for kind in FORMATS) + f"{'pfxw/pickle':>13}")
    for column in columns:
        pickle_s, pfxw_s = (entry[column] for entry in summary)
        print(
            f"{column.removesuffix('_seconds'):24}{pickle_s * 1e3:>10.1f}{pfxw_s * 1e3:>10.1f}"
            f"{pfxw_s / pickle_s:>12.2f}x"
        )
    print(f"{'bytes':24}" + "".join(f"{entry['bytes']:>10}" for entry in summary))
    write_csv(args.out / "bench_wire.csv", summary)
    write_csv(args.out / "bench_wire_runs.csv", rows)
    print(f"\nwrote {args.out / 'bench_wire.csv'}, bench_wire_runs.csv")
    return 0


@contextmanager
def redis_if(wanted: bool) -> Iterator[int | None]:
    """A throwaway redis-server on loopback (the tests' own), or nothing."""
    if not wanted:
        yield None
        return
    from tests.servers import redis_server

    with redis_server() as port:
        yield port


if __name__ == "__main__":
    sys.exit(main())
