"""Per-round communication cost of moving model weights: direct (through Parsl) against the file,
Redis and endpoint stores, over a sweep of model sizes, on parsl_configs/local_htex.py.

    python -m benchmarks.transfer [--models ...] [--modes ...] [--reps 3] [--rounds 1]

(from the project root: the benchmark imports ``tests.servers`` for redis-server and the
endpoints, and its Parsl workers import ``benchmarks``).

Each round is what a FedAvg round does with the weights: the controller sends the global model to
4 site apps, each resolves it and puts it back as its update (no training: the weights of the
named model move unchanged), the controller hands the 4 results to the real aggregate app, which
reads the updates one at a time, averages them (``weighted_mean``) and puts the new global
model. The apps are submitted by the project's ``ParslRuntime`` (which builds the real tasks),
the stores and Parsl executors are the project's own; only the training is left out.

Per round it records the controller's round time (first train submitted -> aggregate result
received, one clock), the aggregator's averaging time (measured in the aggregate app), and the
communication cost = round time - averaging time. Store reads and writes are also timed where
they happen (in the apps). Once per model and mode it measures the bytes Parsl serializes for a
train task and an aggregate task (``pack_apply_message`` on the function, arguments and keyword
arguments Parsl handed the executor, with ``train_site``'s own wrapped function in place of the
synthetic one) and for their results (``serialize`` on what the controller receives).
Modes run interleaved, their order rotated every repetition; the printed figures are medians over
all measured rounds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from parsl import python_app
from parsl.app.python import PythonApp
from parsl.serialize import pack_apply_message, serialize
from proxystore.proxy import Proxy, is_resolved
from proxystore.store.config import StoreConfig

from benchmarks.common import (
    DOCS,
    SWEEP_MODELS,
    keep_weights,
    median,
    print_machine,
    project_root_on_pythonpath,
    relay_train,
    save_figure,
    synthetic_init,
    write_csv,
)
from benchmarks.tree_round import TreeRounds
from proxyflox.apps import train_site
from proxyflox.controller import AppBodies, plan_run
from proxyflox.controller.runtime import ParslRuntime
from proxyflox.controller.store import RunStore
from proxyflox.messages import AggregateResult, GlobalModel, Instructions, TrainResult
from proxyflox.settings import ExperimentConfig, load_experiment
from proxyflox.sites import Deployment, load_deployment, site_executor_labels
from proxyflox.stores import key_of
from proxyflox.strategies import build_strategy
from tests.servers import local_endpoints, redis_server

MODES = ("direct", "file", "redis", "endpoint")
DEFAULT_MODELS = ("floor", "mobilenet-0.4", "mobilenet-1.0", "resnet18", "resnet50")
#: What the targets say: proxies >= 3x faster than direct from this size, never slower at ~2 MB.
LARGE_MB, SMALL_MB, SPEEDUP_TARGET = 40.0, 3.0, 3.0
#: Bytes Parsl ships per task: a train task (and any result) at most 4 KB; an aggregate task at
#: most 2 KB plus 0.7 KB per update; all of it the same whatever the model size.
TRAIN_TASK_TARGET, AGGREGATE_BASE_TARGET, AGGREGATE_PER_UPDATE_TARGET = 4096, 2048, 0.7 * 1024
RESULT_TARGET, CONSTANT_TOLERANCE = 4096, 64
PARSL_BUFFER_THRESHOLD = 1 << 20  # what HighThroughputExecutor.submit passes
#: ``train_site`` as Parsl ships it (its ``wrap_error`` wrapper), for counting a train task's
#: bytes: the benchmark's sites run ``relay_train``, a function of another size.
TRAIN_SITE_AS_SHIPPED: Callable[..., Any] = PythonApp(train_site).func


def aggregate_target(updates: int) -> float:
    """The most bytes an aggregate task with this many updates may have."""
    return AGGREGATE_BASE_TARGET + AGGREGATE_PER_UPDATE_TARGET * updates


@dataclass
class Mode:
    """One way of moving weights: the experiment, its store and the runtime that submits its
    apps (the real tasks, with this mode's store config and executor setups)."""

    name: str
    config: ExperimentConfig
    store: RunStore | None
    runtime: ParslRuntime
    #: The groups' stores and the ledger of an aggregator tree (``None``: a flat run).
    tree: TreeRounds | None = None

    @property
    def store_config(self) -> StoreConfig | None:
        return self.store.config if self.store is not None else None


def mode_overrides(name: str, tmp: Path, stack: ExitStack, labels: list[str]) -> dict[str, Any]:
    """The experiment settings of a mode (starting redis-server, relay and endpoints)."""
    if name == "direct":
        return {"transfer": "direct"}
    if name == "file":
        return {"store.backend": "file"}  # in the mode's own directory, removed at the end
    if name == "redis":
        return {"store.backend": "redis", "store.port": stack.enter_context(redis_server())}
    if name == "endpoint":
        path = stack.enter_context(local_endpoints(tmp / "endpoints", labels))
        return {"store.backend": "endpoint", "store.endpoints_file": str(path)}
    raise SystemExit(f"unknown mode {name!r}; known: {', '.join(MODES)}")


def open_modes(
    names: list[str],
    deployment: Deployment,
    tmp: Path,
    stack: ExitStack,
    labels: list[str],
    overrides_of: Callable[[str], dict[str, Any]] | None = None,
    train: Callable[..., TrainResult] = relay_train,
) -> dict[str, Mode]:
    """Every mode's store and runtime. Parsl is loaded once, by the first mode's runtime; the
    others' apps (bound to the same executors) submit through that one Parsl.

    ``overrides_of``: a mode's experiment settings by its name (default: :func:`mode_overrides`,
    which starts the stores' servers on this machine); ``train``: the sites' app body. A mode
    whose settings have ``tree.groups`` runs its rounds through the tree."""
    modes: dict[str, Mode] = {}
    for name in names:
        settings = (
            overrides_of(name)
            if overrides_of is not None
            else mode_overrides(name, tmp, stack, labels)
        )
        config = load_experiment(None, {"sites": len(labels) - 1} | settings)
        plan = plan_run(config, deployment)
        store = None
        if config.transfer == "proxy":
            store = RunStore(config.store, tmp / name, print)
            stack.callback(store.close)
        runtime = ParslRuntime(
            deployment.parsl_config,
            plan,
            tmp,
            store.config if store is not None else None,
            retries=0,
            bodies=AppBodies(train=train),
        )
        tree = None
        if plan.tree is not None:
            tree = TreeRounds.open(stack, config, plan, runtime, store, tmp / name / "run")
        modes[name] = Mode(name, config, store, runtime, tree)
    stack.enter_context(modes[names[0]].runtime)
    return modes


def evict(mode: Mode, *records: GlobalModel | TrainResult | AggregateResult) -> None:
    """Controller: delete the records' objects by key, never reading them."""
    if mode.store is not None:
        mode.store.evict([key_of(ref) for record in records for ref in record.refs()])


def shipped_bytes(future: Future[Any], function: Callable[..., Any] | None = None) -> int:
    """Bytes of the message Parsl's HighThroughputExecutor packed for a task: the function,
    arguments and keyword arguments Parsl handed it (kept in the task's record), packed as
    ``HighThroughputExecutor.submit`` packs them; ``function`` in place of the task's own."""
    record = future.task_record  # type: ignore[attr-defined]  # a Parsl AppFuture
    return len(
        pack_apply_message(
            function or record["func"], record["args"], record["kwargs"], PARSL_BUFFER_THRESHOLD
        )
    )


@dataclass
class RoundTasks:
    """One round's first train task and its aggregate task, as submitted, with their results."""

    train: Future[TrainResult]
    aggregate: Future[AggregateResult]

    def bytes(self) -> dict[str, int]:
        """Bytes Parsl serializes for one train and one aggregate task and their results."""
        aggregate_args = self.aggregate.task_record["args"]  # type: ignore[attr-defined]
        (task,) = aggregate_args
        one_update = replace(task, updates=task.updates[:1])
        with_one = len(
            pack_apply_message(
                self.aggregate.task_record["func"],  # type: ignore[attr-defined]
                (one_update,),
                {},
                PARSL_BUFFER_THRESHOLD,
            )
        )
        whole = shipped_bytes(self.aggregate)
        return {
            "train_task_bytes": shipped_bytes(self.train, TRAIN_SITE_AS_SHIPPED),
            "train_result_bytes": len(serialize(self.train.result(), PARSL_BUFFER_THRESHOLD)),
            "aggregate_task_bytes": whole,
            "aggregate_updates": len(task.updates),
            "aggregate_task_bytes_one_update": with_one,
            "aggregate_task_bytes_per_update": round(
                (whole - with_one) / max(1, len(task.updates) - 1)
            ),
            "aggregate_result_bytes": len(
                serialize(self.aggregate.result(), PARSL_BUFFER_THRESHOLD)
            ),
        }

    def profile(self) -> list[tuple[str, int]]:
        """Bytes of each part of a train task and an aggregate task, each part serialized alone
        (so the parts add up to about, not exactly, the whole message)."""
        train_record = self.train.task_record  # type: ignore[attr-defined]
        aggregate_record = self.aggregate.task_record  # type: ignore[attr-defined]
        setup, site, round_number, global_model, instructions = train_record["args"]
        (task,) = aggregate_record["args"]
        proxy = global_model.weights
        factory = object.__getattribute__(proxy, "__proxy_factory__")
        default_class = object.__getattribute__(proxy, "__proxy_default_class__")
        default_hash = object.__getattribute__(proxy, "__proxy_default_hash__")
        update = task.updates[0]
        return [
            (
                "train task: function (Parsl's wrapper of train_site)",
                len(serialize(TRAIN_SITE_AS_SHIPPED, PARSL_BUFFER_THRESHOLD)),
            ),
            ("train task: SiteSetup", size(setup)),
            ("  of which DataSpec", size(setup.data)),
            ("  of which ModelSpec", size(setup.model)),
            ("train task: GlobalModel", size(global_model)),
            ("  of which the weights proxy", size(proxy)),
            ("    proxy: its store key", size(factory.key)),
            ("    proxy: its StoreConfig", size(factory.store_config)),
            ("    proxy: default class and hash", size((default_class, default_hash))),
            ("  of which DatasetInfo", size(global_model.dataset)),
            ("train task: Instructions", size(instructions)),
            ("train task: site and round numbers", size((site, round_number))),
            (
                "aggregate task: function (wrapper of aggregate_updates)",
                len(serialize(aggregate_record["func"], PARSL_BUFFER_THRESHOLD)),
            ),
            ("aggregate task: AggregateTask", size(task)),
            ("  of which the strategy", size(task.strategy)),
            ("  of which the StoreConfig", size(task.store_config)),
            ("  of which each UpdateRef", size(update)),
            ("    UpdateRef: its store key", size(update.update)),
            ("  of which the global model's key", size(task.global_weights)),
            ("  of which DatasetInfo", size(task.dataset)),
            (
                "  of which state, endpoint home, paths",
                size((task.state, task.proxystore_home, task.save_path, task.checkpoint_dir)),
            ),
        ]


def size(value: Any) -> int:
    """Bytes of a value serialized inside a task's arguments, as Parsl serializes them."""
    return len(serialize({"x": value})) - len(serialize({"x": None}))


#: Per store mode: what the bytes of a train task and an aggregate task are made of.
PROFILED: dict[str, list[tuple[str, int]]] = {}


def run_block(
    mode: Mode,
    init: Any,
    model: str,
    rounds: int,
    warmup: int,
    rep: int,
    count_bytes: bool,
    probe: Callable[[], Callable[[], dict[str, Any]]] | None = None,
    keep: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rounds of one model in one mode; one row per measured round, and the bytes per task.

    ``probe``: called as each round starts; what it returns is called as the round ends, and
    the columns that returns join the round's row (e.g. the bytes each link carried).
    ``keep``: a directory where the block's last global model is saved, after its round
    (``MODEL-MODE-rep.npz``)."""
    runtime = mode.runtime
    plan = runtime.plan
    strategy = build_strategy(mode.config.strategy)
    instructions = Instructions(**strategy.train_instructions(), update_kind=strategy.update_kind)
    home = plan.setups[plan.aggregator].proxystore_home
    route = plan.setups[plan.aggregator].store_route
    global_model: GlobalModel = init(model, mode.store_config, home, route).result()
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for round_number in range(1, warmup + rounds + 1):
        finish_probe = probe() if probe is not None else None
        start = time.perf_counter()
        if mode.tree is None:
            trains = [
                runtime.train(site, round_number, global_model, instructions)
                for site in range(plan.num_sites)
            ]
            updates = [future.result() for future in trains]
            aggregate = runtime.aggregate(strategy, global_model, updates)
        else:
            trains, updates, aggregate = mode.tree.round(
                strategy, round_number, global_model, instructions
            )
        new_global = aggregate.result()
        round_seconds = time.perf_counter() - start
        probed = finish_probe() if finish_probe is not None else {}

        received: list[TrainResult | AggregateResult] = [*updates, new_global]
        for record in received:
            for ref in record.refs():
                if isinstance(ref, Proxy) and is_resolved(ref):
                    raise AssertionError("the controller resolved a weights proxy")
        if count_bytes and round_number == warmup + 1:
            tasks = RoundTasks(trains[0], aggregate)
            counts = tasks.bytes()
            if mode.name != "direct" and mode.name not in PROFILED:
                PROFILED[mode.name] = tasks.profile()
            del tasks
        del trains, aggregate  # their task records hold the arguments (direct: the weights)
        if mode.tree is not None:  # its ledger evicted the updates once the groups had them
            mode.tree.release()
        else:
            evict(mode, global_model, *updates)
        global_model = new_global.model
        if round_number <= warmup:
            continue
        site_store = [u.resolve_seconds + u.put_seconds for u in updates]
        rows.append(
            {
                "model": model,
                "model_mb": new_global.model_bytes / 1e6,
                "mode": mode.name,
                "rep": rep,
                "round": round_number - warmup,
                "round_seconds": round_seconds,
                "aggregate_seconds": new_global.aggregate_seconds,
                "comm_seconds": round_seconds - new_global.aggregate_seconds,
                "site_resolve_seconds_max": max(u.resolve_seconds for u in updates),
                "site_put_seconds_max": max(u.put_seconds for u in updates),
                "site_store_seconds_max": max(site_store),
                "aggregate_resolve_seconds": new_global.resolve_seconds,
                "aggregate_put_seconds": new_global.put_seconds,
                "store_seconds_critical": max(site_store)
                + new_global.resolve_seconds
                + new_global.put_seconds,
            }
            | probed
        )
    if keep is not None and rep >= 0:
        path = keep / f"{model}-{mode.name}-{rep}.npz"
        saver = python_app(keep_weights, executors=[plan.aggregator])
        saver(global_model, home, str(path), route).result()
    evict(mode, global_model)
    return rows, counts


def run_interleaved(
    modes: dict[str, Mode],
    aggregator: str,
    models: list[str],
    reps: int,
    rounds: int,
    warmup: int,
    probe: Callable[[], Callable[[], dict[str, Any]]] | None = None,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
    keep: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], dict[str, int]]]:
    """Every model in every mode, ``reps`` times, the modes' order rotated each repetition
    (after one warm-up round per mode); the rows of every measured round, and the bytes per
    task of each model and mode. ``on_rows`` gets the rows so far after every block; ``keep``:
    as in :func:`run_block`."""
    names = list(modes)
    init = python_app(synthetic_init, executors=[aggregator])
    print(f"starting workers; modes {', '.join(names)}; models {', '.join(models)}", flush=True)
    for mode in modes.values():  # warm every worker and store connection
        run_block(mode, init, "floor", 1, 1, -1, False)
    rows: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for rep in range(reps):
        for model in models:
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                block, block_counts = run_block(
                    modes[name], init, model, rounds, warmup, rep, (model, name) not in counts,
                    probe, keep,
                )  # fmt: skip
                if block_counts:
                    counts[(model, name)] = block_counts
                rows.extend(block)
                if on_rows is not None:
                    on_rows(rows)
                print(
                    f"rep {rep + 1}/{reps} {model:<16} {name:<9} comm "
                    + " ".join(f"{r['comm_seconds']:.3f}" for r in block),
                    flush=True,
                )
    return rows, counts


#: A round's figures of which the summary keeps the median.
ROUND_FIGURES = (
    "round_seconds",
    "comm_seconds",
    "aggregate_seconds",
    "site_resolve_seconds_max",
    "site_put_seconds_max",
    "aggregate_resolve_seconds",
    "aggregate_put_seconds",
    "store_seconds_critical",
)


def summarize(
    rows: list[dict[str, Any]], counts: dict[tuple[str, str], dict[str, int]], modes: list[str]
) -> list[dict[str, Any]]:
    """Medians per model and mode, with the speedup of each mode over direct."""
    summary = []
    models = list(dict.fromkeys(row["model"] for row in rows))
    for model in models:
        direct_comm = median(
            [r["comm_seconds"] for r in rows if r["model"] == model and r["mode"] == "direct"]
        )
        for mode in modes:
            mine = [r for r in rows if r["model"] == model and r["mode"] == mode]
            if not mine:
                continue
            entry: dict[str, Any] = {
                "model": model,
                "model_mb": mine[0]["model_mb"],
                "mode": mode,
                "rounds": len(mine),
            }
            for key in ROUND_FIGURES:
                entry[key] = median([r[key] for r in mine])
            entry["comm_seconds_min"] = min(r["comm_seconds"] for r in mine)
            entry["comm_seconds_max"] = max(r["comm_seconds"] for r in mine)
            entry["speedup_vs_direct"] = direct_comm / entry["comm_seconds"]
            entry.update(counts.get((model, mode), {}))
            summary.append(entry)
    return summary


def report(summary: list[dict[str, Any]], modes: list[str]) -> list[str]:
    """Print the table and the targets; return the target lines."""
    print(
        "\nmedian per round (seconds): comm = round - averaging; store = store reads/writes on "
        "the critical path; speedup = direct comm / mode comm"
    )
    header = (
        f"{'model':<16}{'MB':>7} {'mode':<9}{'round':>8}{'comm':>8}{'store':>8}"
        f"{'avg':>7}{'speedup':>9}{'train task B':>14}{'agg task B':>12}"
        f"{'train res B':>13}{'agg res B':>11}"
    )
    print(header)
    for e in summary:
        print(
            f"{e['model']:<16}{e['model_mb']:>7.1f} {e['mode']:<9}{e['round_seconds']:>8.3f}"
            f"{e['comm_seconds']:>8.3f}{e['store_seconds_critical']:>8.3f}"
            f"{e['aggregate_seconds']:>7.3f}{e['speedup_vs_direct']:>8.2f}x"
            f"{e.get('train_task_bytes', 0):>14,}{e.get('aggregate_task_bytes', 0):>12,}"
            f"{e.get('train_result_bytes', 0):>13,}{e.get('aggregate_result_bytes', 0):>11,}"
        )
    lines = []
    proxies = [m for m in modes if m != "direct"]
    for e in summary:
        if e["mode"] not in proxies or "direct" not in modes:  # speedups need direct rounds
            continue
        if e["model_mb"] >= LARGE_MB:
            verdict = "met" if e["speedup_vs_direct"] >= SPEEDUP_TARGET else "MISSED"
            lines.append(
                f"{e['mode']} at {e['model_mb']:.1f} MB: {e['speedup_vs_direct']:.2f}x "
                f"faster than direct (target >= {SPEEDUP_TARGET:.0f}x): {verdict}"
            )
        elif 1.0 <= e["model_mb"] <= SMALL_MB:
            verdict = "met" if e["speedup_vs_direct"] >= 1.0 else "MISSED"
            lines.append(
                f"{e['mode']} at {e['model_mb']:.1f} MB: {e['speedup_vs_direct']:.2f}x "
                f"direct's speed (target: never slower, >= 1x): {verdict}"
            )
    lines += bytes_targets(summary, proxies)
    for mode, parts in PROFILED.items():
        print(f"\nbytes profile, {mode} store (each part serialized alone):")
        for what, count in parts:
            print(f"  {what:<64}{count:>7,}")
    print("\ntargets:")
    for line in lines:
        print("  " + line)
    return lines


def bytes_targets(summary: list[dict[str, Any]], modes: list[str]) -> list[str]:
    """The targets on Parsl's bytes per task, per store mode, over every model measured."""
    lines = []
    for mode in modes:
        mine = [e for e in summary if e["mode"] == mode and "train_task_bytes" in e]
        if not mine:
            continue
        train = max(e["train_task_bytes"] for e in mine)
        aggregate = max(e["aggregate_task_bytes"] for e in mine)
        updates = mine[0]["aggregate_updates"]
        allowed = aggregate_target(updates)
        per_update = max(e["aggregate_task_bytes_per_update"] for e in mine)
        result = max(max(e["train_result_bytes"], e["aggregate_result_bytes"]) for e in mine)
        lines.append(
            f"{mode}: train task {train:,} B (target <= {TRAIN_TASK_TARGET:,} B): "
            + _verdict(train, TRAIN_TASK_TARGET)
        )
        lines.append(
            f"{mode}: aggregate task with {updates} updates {aggregate:,} B, {per_update:,} B per "
            f"update (target <= {AGGREGATE_BASE_TARGET:,} + {AGGREGATE_PER_UPDATE_TARGET:.0f} "
            f"per update = {allowed:,.0f} B): " + _verdict(aggregate, allowed)
        )
        one = max(e["aggregate_task_bytes_one_update"] for e in mine)
        lines.append(
            f"{mode}: aggregate task with 1 update {one:,} B (target <= {aggregate_target(1):,.0f}"
            " B): " + _verdict(one, aggregate_target(1))
        )
        lines.append(
            f"{mode}: largest result {result:,} B (target <= {RESULT_TARGET:,} B): "
            + _verdict(result, RESULT_TARGET)
        )
        if len(mine) > 1:
            spread = max(
                max(e[key] for e in mine) - min(e[key] for e in mine)
                for key in ("train_task_bytes", "aggregate_task_bytes")
            )
            sizes = f"{min(e['model_mb'] for e in mine):.3f}-{max(e['model_mb'] for e in mine):.1f}"
            lines.append(
                f"{mode}: task bytes differ by at most {spread} B over {sizes} MB (target: "
                f"constant in model size, within {CONSTANT_TOLERANCE} B): "
                + ("met" if spread <= CONSTANT_TOLERANCE else "MISSED")
            )
    return lines


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else f"MISSED by {value - target:,.0f} B"


def plot(summary: list[dict[str, Any]], modes: list[str], path: Path) -> None:
    """Communication time, speedup and Parsl bytes per task against model size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    sized = [e for e in summary if e["model_mb"] >= 0.5]
    for index, mode in enumerate(MODES):
        mine = sorted((e for e in sized if e["mode"] == mode), key=lambda e: e["model_mb"])
        if not mine:
            continue
        color = f"C{index}"
        mb = [e["model_mb"] for e in mine]
        axes[0].plot(mb, [e["comm_seconds"] for e in mine], marker="o", color=color, label=mode)
        if mode != "direct" and "direct" in modes:
            speedups = [e["speedup_vs_direct"] for e in mine]
            axes[1].plot(mb, speedups, marker="o", color=color, label=mode)
        for key, style, what in (("train_task_bytes", "-", "train"),
                                 ("aggregate_task_bytes", "--", "aggregate")):  # fmt: skip
            sizes = [e.get(key, float("nan")) for e in mine]
            axes[2].plot(mb, sizes, style, marker="o", color=color, label=f"{mode}, {what} task")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="model size (MB)",
        ylabel="communication per round (s, median)",
        title="broadcast + gather, 4 sites",
    )
    axes[1].axhline(SPEEDUP_TARGET, color="grey", linestyle="--", label="3x target")
    axes[1].axhline(1.0, color="grey", linestyle=":")
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="model size (MB)",
        ylabel="direct comm / proxy comm",
        title="speedup over direct",
    )
    axes[2].axhline(TRAIN_TASK_TARGET, color="grey", linestyle="--", label="4 KB train task target")
    axes[2].set(
        xscale="log",
        yscale="log",
        xlabel="model size (MB)",
        ylabel="bytes Parsl serializes per task",
        title="Parsl payload per task",
    )
    save_figure(fig, axes, path)  # a sweep without models >= 0.5 MB has no legend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        choices=list(SWEEP_MODELS),
        help="models to sweep",
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds per repetition")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="unmeasured rounds per model and mode (every worker and store "
        "connection is warmed once at the start anyway)",
    )
    parser.add_argument("--out", type=Path, default=DOCS, help="where CSV and PNG go")
    parser.add_argument("--config", default="local_htex.py", help="Parsl config")
    parser.add_argument(
        "--no-parsl-log",
        action="store_true",
        help="load Parsl without its DEBUG log file (Config.initialize_logging=False)",
    )
    args = parser.parse_args(argv)

    print_machine()
    project_root_on_pythonpath()  # the workers unpickle the benchmark's app bodies
    tmp = Path(tempfile.mkdtemp(prefix="proxyflox-bench-transfer-"))
    deployment = load_deployment(args.config)
    deployment.parsl_config.initialize_logging = not args.no_parsl_log
    aggregator = "aggregator"
    labels = site_executor_labels(deployment.parsl_config, aggregator)
    rows: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], dict[str, int]] = {}
    try:
        with ExitStack() as stack:
            modes = open_modes(args.modes, deployment, tmp, stack, [*labels, aggregator])
            rows, counts = run_interleaved(
                modes, aggregator, args.models, args.reps, args.rounds, args.warmup
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = summarize(rows, counts, args.modes)
    report(summary, args.modes)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "bench_transfer_rounds.csv", rows)
    write_csv(args.out / "bench_transfer.csv", summary)
    plot(summary, args.modes, args.out / "bench_transfer.png")
    print(
        f"\nwrote {args.out / 'bench_transfer.csv'}, bench_transfer_rounds.csv, bench_transfer.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
