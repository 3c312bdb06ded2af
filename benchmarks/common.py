"""Shared parts of the benchmark scripts in ``workflows/bench_*.py``.

Benchmarks are scripts, not tests: they print medians and ratios measured side by side in one
run and write CSV files and plots. Every duration is measured by one clock in the process where
the work happens (a put in the putting app, a resolve in the resolving app, a round in the
controller); no duration is ever computed from the clocks of two processes.

This module holds what several benchmarks share: the machine description, throwaway servers on
127.0.0.1 (redis-server, ProxyStore relay and endpoints), weights of a given model for transfer
sweeps, the synthetic app bodies that move those weights through the project's own
``put_weights``/``resolve_weights`` and Parsl paths, and timed wrappers around the real app
bodies with a :class:`~proxyflox.federation.Federation` that records what they report.
"""

from __future__ import annotations

import csv
import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from parsl import python_app
from proxyflox.federation import Federation
from proxyflox.rounds import run_rounds

from proxyflox.apps import (
    FederationApps,
    aggregate_updates,
    bind_apps,
    evaluate_global,
    train_site,
)
from proxyflox.data import DatasetInfo
from proxyflox.results import round_columns
from proxyflox.settings import ExperimentConfig, SiteOptions
from proxyflox.sites import Deployment
from proxyflox.stores import enter_site, put_weights, resolve_weights
from proxyflox.strategies import build_strategy
from proxyflox.weights import Weights, weights_nbytes, weights_of

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# ---------------------------------------------------------------------------------------------
# The machine


def machine_info() -> dict[str, str]:
    """What the figures were measured on: cores, memory, CPU model, load and versions."""
    import parsl
    import proxystore
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "nproc": str(os.cpu_count()),
        "memory_gib": f"{psutil.virtual_memory().total / 2**30:.1f}",
        "cpu": cpu,
        "load_average_at_start": load,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "parsl": parsl.__version__,
        "proxystore": proxystore.__version__,
    }


def print_machine() -> dict[str, str]:
    """Print :func:`machine_info` as one line and return it."""
    info = machine_info()
    print("machine: " + "; ".join(f"{key} {value}" for key, value in info.items()), flush=True)
    return info


# ---------------------------------------------------------------------------------------------
# Numbers


def median(values: Sequence[float]) -> float:
    """Median, ``nan`` for no values."""
    return float(statistics.median(values)) if values else float("nan")


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows as CSV (columns: the union of the rows' keys, in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default)."""
    return int(psutil.Process(pid).memory_info().rss)


# ---------------------------------------------------------------------------------------------
# Servers on loopback


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[int]:
    """A throwaway redis-server on 127.0.0.1 without persistence; yields its port."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is missing: apt-get install redis-server")
    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "yes",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.StrictRedis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def local_endpoints(directory: Path, labels: list[str]) -> Iterator[Path]:
    """A ProxyStore relay and one endpoint per label on 127.0.0.1 (``proxyflox.endpoints``);
    yields the endpoints file and stops everything on the way out."""
    from proxyflox.endpoints import down, up

    path = up(directory, labels)
    try:
        yield path
    finally:
        down(directory)


# ---------------------------------------------------------------------------------------------
# Data in MNIST's on-disk format (no download)


def write_mnist_like(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """Write synthetic 28x28 images in MNIST's raw idx format under ``root/MNIST/raw``, which the
    project's ``mnist`` loader reads as it reads MNIST; returns ``root`` (the ``data_dir``).

    Each image is noise plus a bright 6x6 patch whose place depends on the label, so the data is
    learnable; only its shape and size matter to the benchmarks.
    """
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
        for label in range(10):
            row, col = divmod(label, 4)
            images[labels == label, row * 9 : row * 9 + 6, col * 7 : col * 7 + 6] = 250
        for name, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
            header += struct.pack(f">{array.ndim}I", *array.shape)
            (raw / f"{prefix}-{name}-ubyte").write_bytes(header + array.tobytes())
    return root


# ---------------------------------------------------------------------------------------------
# Models of a given size (transfer sweeps)


@dataclass(frozen=True)
class ModelSpec:
    """A model whose weights a transfer benchmark moves."""

    name: str
    description: str
    info: DatasetInfo
    build: Callable[[], Any]


def _project_model(name: str, info: DatasetInfo, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        from proxyflox.models import build_model

        return build_model(name, info.input_shape, info.num_classes, **kwargs)

    return build


def _torchvision_model(name: str) -> Callable[[], Any]:
    def build() -> Any:
        import torchvision.models

        return getattr(torchvision.models, name)(num_classes=10)

    return build


_MNIST = DatasetInfo((1, 28, 28), 10)
_CIFAR = DatasetInfo((3, 32, 32), 10)

#: Models of the transfer sweep, by name. The torchvision models have a 10-class head, which
#: keeps ResNet-50 under the ProxyStore endpoint's default 100 MB object limit.
MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "floor",
            "4 KB of float32 (the round loop's fixed cost)",
            _CIFAR,
            lambda: {"w": np.zeros(1024, dtype=np.float32)},
        ),
        ModelSpec(
            "mobilenet-0.4",
            "MobileNet-like, width 0.4, CIFAR-10",
            _CIFAR,
            _project_model("mobilenet", _CIFAR, width_multiplier=0.4),
        ),
        ModelSpec("cnn-mnist", "small CNN, 1x28x28", _MNIST, _project_model("cnn", _MNIST)),
        ModelSpec(
            "mobilenet-1.0",
            "MobileNet-like, width 1.0, CIFAR-10",
            _CIFAR,
            _project_model("mobilenet", _CIFAR),
        ),
        ModelSpec(
            "depth_cnn-mnist", "depth-1 CNN, 1x28x28", _MNIST, _project_model("depth_cnn", _MNIST)
        ),
        ModelSpec(
            "depth_cnn-cifar", "depth-1 CNN, 3x32x32", _CIFAR, _project_model("depth_cnn", _CIFAR)
        ),
        ModelSpec(
            "resnet18", "torchvision ResNet-18, 10 classes", _CIFAR, _torchvision_model("resnet18")
        ),
        ModelSpec(
            "resnet34", "torchvision ResNet-34, 10 classes", _CIFAR, _torchvision_model("resnet34")
        ),
        ModelSpec(
            "resnet50", "torchvision ResNet-50, 10 classes", _CIFAR, _torchvision_model("resnet50")
        ),
    )
}


def model_weights(name: str, seed: int = 0) -> Weights:
    """The named model's initial weights (seeded), as the project's numpy ``Weights``."""
    import torch

    built = MODEL_SPECS[name].build()
    if isinstance(built, dict):
        return dict(built)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return weights_of(MODEL_SPECS[name].build())


# ---------------------------------------------------------------------------------------------
# Synthetic app bodies: real put/resolve and Parsl paths, no training


def synthetic_init(
    model: str, store_config: Any, options: SiteOptions | None = None
) -> dict[str, Any]:
    """Aggregator: build the named model's weights and put them, as ``init_global_model``
    does (same result keys)."""
    enter_site(options or SiteOptions())
    weights = model_weights(model)
    ref, put_seconds = put_weights(weights, store_config)
    return {
        "weights": ref,
        "state": None,
        "dataset": MODEL_SPECS[model].info,
        "model_bytes": weights_nbytes(weights),
        "put_seconds": put_seconds,
    }


def relay_train(
    config: ExperimentConfig,
    site: int,
    num_sites: int,
    round_number: int,
    global_model: Mapping[str, Any],
    store_config: Any,
    options: SiteOptions | None = None,
    instructions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Site, for transfer benchmarks: ``train_site`` without the training.

    Takes the same arguments as ``train_site``, resolves the global model the same way, puts it
    back as the site's update, and returns a result with the same keys (so that the bytes Parsl
    moves per task are those of the real workflow).
    """
    enter_site(options or SiteOptions())
    received, resolve_seconds = resolve_weights(global_model["weights"])
    ref, put_seconds = put_weights(received, store_config)
    del received
    info = global_model.get("dataset") or _CIFAR
    return {
        "weights": ref,
        "site": site,
        "num_samples": 100 + site,
        "class_counts": [10 + site] * info.num_classes,
        "dataset": info,
        "train_loss": 0.0,
        "resolve_seconds": resolve_seconds,
        "train_seconds": 0.0,
        "put_seconds": put_seconds,
        "local_epochs": config.local_epochs,
        "batch_size": config.batch_size,
        "device": "cpu",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "netns": "",
        "batch_job": "",
    }


# ---------------------------------------------------------------------------------------------
# Timed app bodies: the real ones, plus their whole duration in their own process


def _timed(app: str, body: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    result = body(*args, **kwargs)
    result["app"] = app
    result["app_seconds"] = time.perf_counter() - start
    result["app_pid"] = os.getpid()
    return result


def timed_train_site(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``train_site``, adding ``app_seconds``: its whole body, timed where it runs."""
    return dict(_timed("train", train_site, *args, **kwargs))


def timed_aggregate_updates(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``aggregate_updates``, adding ``app_seconds``."""
    return dict(_timed("aggregate", aggregate_updates, *args, **kwargs))


def timed_evaluate_global(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``evaluate_global``, adding ``app_seconds``."""
    return dict(_timed("evaluate", evaluate_global, *args, **kwargs))


def bind_timed_apps(site_labels: list[str], aggregator_label: str) -> FederationApps:
    """Like ``bind_apps``, with the timed train, aggregate and evaluate bodies."""
    return bind_apps(
        site_labels,
        aggregator_label,
        train=timed_train_site,
        aggregate=timed_aggregate_updates,
        evaluate=timed_evaluate_global,
    )


@dataclass
class RoundRecord:
    """What one synchronous round reported, from the controller and from every app."""

    row: dict[str, Any]  # the round's rounds.csv row
    trains: list[dict[str, Any]] = field(default_factory=list)
    aggregate: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    loop_seconds: float = 0.0  # controller: from the previous round's end to this one's
    controller_rss: int = 0
    controller_rss_anon: int = 0  # anonymous part of the RSS (heap), without mapped files
    controller_cpu_seconds: float = 0.0  # controller process CPU time during the round
    #: Last round with ``trim_heap``: RSS once the C heap returned its free pages (malloc_trim).
    controller_rss_after_trim: int = 0

    def critical_path(self, placement: Sequence[str]) -> float:
        """Seconds of app work the round had to wait for, each measured in its own process:
        the busiest site executor (its apps run one after another on its one worker), then
        the aggregate and evaluate apps."""
        per_executor: dict[str, float] = {}
        for train in self.trains:
            label = placement[int(train["site"])]
            per_executor[label] = per_executor.get(label, 0.0) + float(train["app_seconds"])
        return (
            max(per_executor.values())
            + float(self.aggregate["app_seconds"])
            + float(self.evaluate["app_seconds"])
        )


class TimedFederation(Federation):
    """A :class:`Federation` whose train, aggregate and evaluate apps are the timed bodies, and
    which keeps what they return for the current round."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.apps = bind_timed_apps(sorted(set(self.placement)), self.config.aggregator)
        self.round_trains: list[dict[str, Any]] = []
        self.round_aggregate: dict[str, Any] = {}
        self.round_evaluation: Future[Any] | None = None

    def settle(self, future: Future[Any]) -> Any:
        result = super().settle(future)
        if isinstance(result, dict) and result.get("app") == "aggregate":
            self.round_aggregate = result
        return result

    def log_sites(self, round_number: int, updates: Any) -> None:
        self.round_trains = list(updates)
        super().log_sites(round_number, updates)

    def evaluate(self, global_model: Any) -> Future[Any]:
        self.round_evaluation = super().evaluate(global_model)
        return self.round_evaluation


def noop(value: int) -> int:
    """An app that does nothing, for timing Parsl's own round trip."""
    return value


def noop_round_trip(labels: Sequence[str], repeats: int = 20) -> dict[str, float]:
    """Median controller-side round trip (submit -> result) of a no-op app per executor label,
    on the Parsl configuration currently loaded."""
    medians = {}
    for label in labels:
        app = python_app(noop, executors=[label])
        app(0).result()
        times = []
        for index in range(repeats):
            start = time.perf_counter()
            app(index).result()
            times.append(time.perf_counter() - start)
        medians[label] = median(times)
    return medians


def run_timed(
    config: ExperimentConfig,
    deployment: Deployment,
    run_dir: Path,
    progress: Callable[[str], None] = print,
    probe_labels: Sequence[str] = (),
    trim_heap: bool = False,
) -> tuple[list[RoundRecord], list[str], dict[str, float]]:
    """The project's synchronous round loop (``rounds.run_rounds``) on a deployment, with timed
    apps; returns every round's record, the site placement (executor label per site) and, for
    ``probe_labels``, the no-op app round trip on those executors after the last round. With
    ``trim_heap``, the last record also holds the controller's RSS after glibc's ``malloc_trim``
    (what of its memory is freed heap not yet returned to the system).

    ``loop_seconds`` is the controller's time from the end of one round's iteration to the end
    of the next (``nan`` for round 1, which also builds the initial model and waits for the
    workers to start), so it includes everything the controller does per round: sampling,
    submitting, waiting, evicting, writing the CSV rows and the checkpoint marker.
    """
    strategy = build_strategy(config.strategy)
    columns = lambda num_sites: round_columns(num_sites, config.evaluate_sites)  # noqa: E731
    records: list[RoundRecord] = []
    controller = psutil.Process()
    timed = TimedFederation(config, deployment, run_dir, progress, columns)
    with timed:
        rounds = run_rounds(timed, strategy)
        first = next(rounds)  # the initial model and round 1
        records.append(RoundRecord(first))
        previous = time.perf_counter()
        cpu_previous = _cpu_seconds(controller)
        _fill(records[-1], timed, controller, float("nan"), float("nan"))
        for row in rounds:
            now, cpu = time.perf_counter(), _cpu_seconds(controller)
            records.append(RoundRecord(row))
            _fill(records[-1], timed, controller, now - previous, cpu - cpu_previous)
            previous, cpu_previous = now, cpu
        placement = list(timed.placement)
        if trim_heap:
            records[-1].controller_rss_after_trim = _rss_after_malloc_trim(controller)
        latency = noop_round_trip(probe_labels)
    return records, placement, latency


def _rss_after_malloc_trim(process: psutil.Process) -> int:
    """RSS after asking glibc to return free heap pages to the system (0 without glibc)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return 0
    return int(process.memory_info().rss)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _fill(
    record: RoundRecord,
    federation: TimedFederation,
    controller: psutil.Process,
    loop_seconds: float,
    cpu_seconds: float,
) -> None:
    # Numbers only: a record must not keep the round's proxies and objects alive (the controller's
    # memory is what some benchmarks measure).
    record.trains = [_numbers(train) for train in federation.round_trains]
    record.aggregate = _numbers(federation.round_aggregate)
    if federation.round_evaluation is not None:
        record.evaluate = _numbers(federation.round_evaluation.result())
    federation.round_trains, federation.round_aggregate = [], {}
    federation.round_evaluation = None
    record.loop_seconds = loop_seconds
    record.controller_cpu_seconds = cpu_seconds
    record.controller_rss = int(controller.memory_info().rss)
    record.controller_rss_anon = _rss_anon()


def _numbers(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "weights"}


def _rss_anon() -> int:
    """This process's anonymous resident memory (heap, stacks; not mapped files such as shared
    libraries), from ``/proc/self/status``; 0 where that does not exist."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
