"""Shared parts of the benchmarks in ``benchmarks/`` (run as ``python -m benchmarks.NAME`` from
the project root).

Benchmarks are scripts, not tests: they print medians and ratios measured side by side in one
run and write CSV files and plots. Every duration is measured by one clock in the process where
the work happens (a put in the putting app, a resolve in the resolving app, a round in the
controller); no duration is ever computed from the clocks of two processes.

This module holds what several benchmarks share: the machine description, weights of a given
model for transfer sweeps, the synthetic app bodies that move those weights through the
project's own ``put_weights``/``resolve_weights`` and Parsl paths, and timed app bodies (the
real ones, plus their whole duration measured where they run) with a :class:`RunObserver` that
keeps what they report. The throwaway servers (redis-server, ProxyStore relay and endpoints) are
the tests' own, from :mod:`tests.servers`.

Parsl workers unpickle the bodies and records defined here, so they must be able to import this
package: :func:`project_root_on_pythonpath` before Parsl starts them.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil
from parsl import python_app
from proxystore.store.config import StoreConfig

from proxyflox.apps import aggregate_updates, evaluate_global, train_site
from proxyflox.controller import AppBodies, RunObserver, plan_run, run_federation
from proxyflox.data import DatasetInfo
from proxyflox.messages import (
    AggregateResult,
    AggregateTask,
    Evaluation,
    GlobalModel,
    Instructions,
    SiteSetup,
    TrainResult,
)
from proxyflox.settings import ExperimentConfig
from proxyflox.sites import Deployment
from proxyflox.stores import (
    StoreRoute,
    enter_site,
    open_app_store,
    put_weights,
    resolve_weights,
    store_of,
)
from proxyflox.weights import Weights

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def project_root_on_pythonpath() -> None:
    """Put the project root first on ``PYTHONPATH`` (and ``sys.path``), so that the processes
    this one starts (Parsl's workers, child processes) import ``benchmarks`` and this checkout's
    ``proxyflox``. Call before ``parsl.load``."""
    root = str(ROOT)
    parts = [part for part in os.environ.get("PYTHONPATH", "").split(os.pathsep) if part]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])
    if root not in sys.path:
        sys.path.insert(0, root)


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
    redis = shutil.which("redis-server")
    redis_version = "absent"
    if redis is not None:
        words = subprocess.run([redis, "--version"], capture_output=True, text=True).stdout.split()
        redis_version = next((w[2:] for w in words if w.startswith("v=")), "unknown")
    return {
        "nproc": str(os.cpu_count()),
        "memory_gib": f"{psutil.virtual_memory().total / 2**30:.1f}",
        "cpu": cpu,
        "load_average_at_start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "parsl": parsl.__version__,
        "proxystore": proxystore.__version__,
        "redis-server": redis_version,
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


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows :func:`write_csv` wrote, numbers as numbers (``[]`` if there is no file)."""
    if not path.exists():
        return []

    def value(text: str) -> Any:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(path, newline="") as file:
        return [{key: value(text) for key, text in row.items()} for row in csv.DictReader(file)]


def save_figure(figure: Any, axes: Sequence[Any], path: Path) -> None:
    """Grid and legend on every axis (a legend only where something is labelled), then the
    figure to ``path``, closed."""
    import matplotlib.pyplot as plt

    for axis in axes:
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def numbers(record: Any) -> dict[str, Any]:
    """A record's numbers and strings, without its references: what a benchmark keeps of a
    result (keeping the record would keep its proxies alive, and the controller's memory is what
    some benchmarks measure)."""
    values = {item.name: getattr(record, item.name) for item in fields(record)}
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str))}


# ---------------------------------------------------------------------------------------------
# Models of a given size (transfer sweeps)


@dataclass(frozen=True)
class SweepModel:
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
SWEEP_MODELS: dict[str, SweepModel] = {
    model.name: model
    for model in (
        SweepModel(
            "floor",
            "4 KB of float32 (the round loop's fixed cost)",
            _CIFAR,
            lambda: {"w": np.zeros(1024, dtype=np.float32)},
        ),
        SweepModel(
            "mobilenet-0.4",
            "MobileNet-like, width 0.4, CIFAR-10",
            _CIFAR,
            _project_model("mobilenet", _CIFAR, width_multiplier=0.4),
        ),
        SweepModel("cnn-mnist", "small CNN, 1x28x28", _MNIST, _project_model("cnn", _MNIST)),
        SweepModel(
            "mobilenet-1.0",
            "MobileNet-like, width 1.0, CIFAR-10",
            _CIFAR,
            _project_model("mobilenet", _CIFAR),
        ),
        SweepModel(
            "depth_cnn-mnist", "depth-1 CNN, 1x28x28", _MNIST, _project_model("depth_cnn", _MNIST)
        ),
        SweepModel(
            "depth_cnn-cifar", "depth-1 CNN, 3x32x32", _CIFAR, _project_model("depth_cnn", _CIFAR)
        ),
        SweepModel(
            "resnet18", "torchvision ResNet-18, 10 classes", _CIFAR, _torchvision_model("resnet18")
        ),
        SweepModel(
            "resnet34", "torchvision ResNet-34, 10 classes", _CIFAR, _torchvision_model("resnet34")
        ),
        SweepModel(
            "resnet50", "torchvision ResNet-50, 10 classes", _CIFAR, _torchvision_model("resnet50")
        ),
    )
}


def model_weights(name: str, seed: int = 0) -> Weights:
    """The named model's initial weights (seeded), as the project's numpy ``Weights``."""
    import torch

    from proxyflox.models.weights import weights_of

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = SWEEP_MODELS[name].build()
        return dict(built) if isinstance(built, dict) else weights_of(built)


# ---------------------------------------------------------------------------------------------
# Synthetic app bodies (transfer): the real put/resolve and Parsl paths, no training


def synthetic_init(
    model: str,
    store_config: StoreConfig | None,
    proxystore_home: str | None,
    store_route: StoreRoute | None = None,
) -> GlobalModel:
    """Aggregator: the named sweep model's weights, put as ``init_global_model`` puts them."""
    enter_site(proxystore_home, store_route)
    weights = model_weights(model)
    ref, _ = put_weights(weights, open_app_store(store_config))
    return GlobalModel(weights=ref, dataset=SWEEP_MODELS[model].info)


def relay_train(
    setup: SiteSetup,
    site: int,
    round_number: int,
    global_model: GlobalModel,
    instructions: Instructions,
) -> TrainResult:
    """Site, for transfer benchmarks: ``train_site`` without the training.

    Same signature as ``train_site`` (so a task carries what a real train task carries): it
    resolves the global model the same way, puts it back unchanged as the site's update where
    the global model came from, and returns a ``TrainResult``.
    """
    return _send_back(setup, site, global_model, lambda weights: weights)


#: What :func:`offset_train` adds to every weight, times the site's number plus one.
SITE_OFFSET = 1e-3


def offset_train(
    setup: SiteSetup,
    site: int,
    round_number: int,
    global_model: GlobalModel,
    instructions: Instructions,
) -> TrainResult:
    """:func:`relay_train`, with site i's update the global model plus (i + 1) x
    :data:`SITE_OFFSET` in every floating-point weight (counters stay): updates that differ, so
    that a mean which loses or misweighs a site shows, at the cost of one addition per weight."""

    def shifted(weights: Weights) -> Weights:
        for array in weights.values():
            if np.issubdtype(array.dtype, np.floating):
                array += np.asarray((site + 1) * SITE_OFFSET, dtype=array.dtype)
        return weights

    return _send_back(setup, site, global_model, shifted)


def _send_back(
    setup: SiteSetup,
    site: int,
    global_model: GlobalModel,
    change: Callable[[Weights], Weights],
) -> TrainResult:
    """Resolve the global model, put ``change`` of it back as the site's update."""
    enter_site(setup.proxystore_home, setup.store_route)
    received, resolve_seconds = resolve_weights(global_model.weights)
    ref, put_seconds = put_weights(change(received), store_of(global_model.weights))
    del received
    return TrainResult(
        site=site,
        update=ref,
        num_samples=100 + site,
        class_counts=[10 + site] * global_model.dataset.num_classes,
        train_loss=0.0,
        resolve_seconds=resolve_seconds,
        train_seconds=0.0,
        put_seconds=put_seconds,
        local_epochs=setup.local_epochs,
        batch_size=setup.batch_size,
        device=setup.device,
        host=socket.gethostname(),
        pid=os.getpid(),
        netns="",
        batch_job="",
    )


def keep_weights(
    global_model: GlobalModel,
    proxystore_home: str | None,
    path: str,
    store_route: StoreRoute | None = None,
) -> str:
    """Aggregator: save a global model's weights to ``path`` (``.npz``), for comparing the
    models that different ways of moving weights made; returns the path."""
    enter_site(proxystore_home, store_route)
    weights, _ = resolve_weights(global_model.weights)
    np.savez(path, **weights)  # type: ignore[arg-type]  # numpy's stubs: kwds are arrays
    return path


# ---------------------------------------------------------------------------------------------
# Timed app bodies: the real ones, plus their whole duration in their own process


@dataclass(frozen=True, eq=False)
class TimedTrainResult(TrainResult):
    """``train_site``'s result and its whole body's duration, timed where it ran."""

    app_seconds: float = 0.0
    app_pid: int = 0


@dataclass(frozen=True, eq=False)
class TimedAggregateResult(AggregateResult):
    """``aggregate_updates``'s result and its whole body's duration."""

    app_seconds: float = 0.0
    app_pid: int = 0


@dataclass(frozen=True)
class TimedEvaluation(Evaluation):
    """``evaluate_global``'s result and its whole body's duration."""

    app_seconds: float = 0.0
    app_pid: int = 0


T = TypeVar("T")


def _timed(timed: Callable[..., T], body: Callable[..., Any], *args: Any) -> T:
    """Run ``body`` and return its record as ``timed``, with the seconds it took here."""
    start = time.perf_counter()
    result = body(*args)
    seconds = time.perf_counter() - start
    copied = {item.name: getattr(result, item.name) for item in fields(result)}
    return timed(**copied, app_seconds=seconds, app_pid=os.getpid())


def timed_train_site(
    setup: SiteSetup,
    site: int,
    round_number: int,
    global_model: GlobalModel,
    instructions: Instructions,
) -> TimedTrainResult:
    """``train_site``, timed where it runs."""
    return _timed(
        TimedTrainResult, train_site, setup, site, round_number, global_model, instructions
    )


def timed_aggregate_updates(task: AggregateTask) -> TimedAggregateResult:
    """``aggregate_updates``, timed where it runs."""
    return _timed(TimedAggregateResult, aggregate_updates, task)


def timed_evaluate_global(setup: SiteSetup, global_model: GlobalModel) -> TimedEvaluation:
    """``evaluate_global``, timed where it runs."""
    return _timed(TimedEvaluation, evaluate_global, setup, global_model)


#: The run's apps with timed train, aggregate and evaluate bodies.
TIMED_BODIES = AppBodies(
    train=timed_train_site, aggregate=timed_aggregate_updates, evaluate=timed_evaluate_global
)


@dataclass
class RoundRecord:
    """What one synchronous round reported, from the controller and from every app (numbers
    only, see :func:`numbers`)."""

    row: dict[str, Any]  # the round's rounds.csv row
    trains: list[dict[str, Any]] = field(default_factory=list)
    aggregate: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    #: Controller: from the previous round's end to this one's (``nan`` for the first round).
    loop_seconds: float = math.nan
    controller_rss: int = 0
    controller_rss_anon: int = 0  # anonymous part of the RSS (heap), without mapped files
    controller_cpu_seconds: float = math.nan  # controller process CPU time during the round
    #: Last round with ``trim_heap``: RSS once the C heap returned its free pages (malloc_trim).
    controller_rss_after_trim: int = 0

    def critical_path(self, placement: Sequence[str]) -> float:
        """Seconds of app work the round had to wait for, each measured in its own process:
        the busiest site executor (its apps run one after another on its one worker), then
        the aggregate app (the evaluation runs while the next round trains)."""
        per_executor: dict[str, float] = {}
        for train in self.trains:
            label = placement[int(train["site"])]
            per_executor[label] = per_executor.get(label, 0.0) + float(train["app_seconds"])
        return max(per_executor.values()) + float(self.aggregate["app_seconds"])


class RoundTimer(RunObserver):
    """Keeps what the timed apps of every round report, with the controller's own figures.

    ``loop_seconds`` is the controller's time from one round's end (its row written, its
    checkpoint marked) to the next one's, so it includes everything the controller does per
    round: sampling, submitting, waiting, evicting, writing the CSV rows and the marker.

    Args:
        last_round: The run's last round, after which ``trim_heap`` and ``probe_labels`` act
            (while Parsl is still up).
        probe_labels: Executors on which to time a no-op app's round trip after the last round.
        trim_heap: After the last round, also record the RSS once glibc's ``malloc_trim``
            returned free heap (what of the controller's memory is freed heap not yet returned).
    """

    def __init__(
        self, last_round: int, probe_labels: Sequence[str] = (), trim_heap: bool = False
    ) -> None:
        self.last_round = last_round
        self.probe_labels = list(probe_labels)
        self.trim_heap = trim_heap
        self.records: list[RoundRecord] = []
        #: No-op app round trip per probed executor label (seconds, median).
        self.latency: dict[str, float] = {}
        self._process = psutil.Process()
        # Rounds under way, by number: a round's evaluation comes in while the next one trains.
        self._open: dict[int, RoundRecord] = {}
        self._previous: tuple[float, float] | None = None  # wall, CPU at the last round's end

    def round_started(self, round_number: int, sites: Sequence[int]) -> None:
        self._open[round_number] = RoundRecord({})

    def trained(self, round_number: int, result: TrainResult) -> None:
        self._open[round_number].trains.append(numbers(result))

    def aggregated(self, round_number: int, result: AggregateResult) -> None:
        self._open[round_number].aggregate = numbers(result)

    def evaluated(self, round_number: int, evaluation: Evaluation) -> None:
        # A resumed run evaluates its checkpoint's round again, which it did not start.
        self._open.setdefault(round_number, RoundRecord({})).evaluate = numbers(evaluation)

    def round_finished(self, round_number: int, row: Mapping[str, Any]) -> None:
        now, cpu = time.perf_counter(), _cpu_seconds(self._process)
        record = self._open.pop(round_number)
        record.row = dict(row)
        if self._previous is not None:
            record.loop_seconds = now - self._previous[0]
            record.controller_cpu_seconds = cpu - self._previous[1]
        record.controller_rss = int(self._process.memory_info().rss)
        record.controller_rss_anon = _rss_anon()
        self.records.append(record)
        if round_number == self.last_round:
            if self.trim_heap:
                record.controller_rss_after_trim = _rss_after_malloc_trim(self._process)
            self.latency = noop_round_trip(self.probe_labels)
        self._previous = (time.perf_counter(), _cpu_seconds(self._process))


def run_timed(
    config: ExperimentConfig,
    deployment: Deployment,
    run_dir: Path,
    progress: Callable[[str], None] = print,
    probe_labels: Sequence[str] = (),
    trim_heap: bool = False,
) -> tuple[list[RoundRecord], list[str], dict[str, float]]:
    """The project's run (``run_federation``) with timed apps; returns every round's record,
    the site placement (executor label per site) and, for ``probe_labels``, the no-op app round
    trip on those executors after the last round (see :class:`RoundTimer`)."""
    project_root_on_pythonpath()
    plan = plan_run(config, deployment)
    timer = RoundTimer(config.rounds, probe_labels, trim_heap)
    run_federation(
        config,
        deployment,
        run_dir,
        progress=progress,
        plan=plan,
        observer=timer,
        bodies=TIMED_BODIES,
    )
    return timer.records, list(plan.placement), timer.latency


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
