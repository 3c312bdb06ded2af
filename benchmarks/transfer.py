#!/usr/bin/env python3
"""Per-round communication cost of moving model weights: direct (through Parsl) against the file,
Redis and endpoint stores, over a sweep of model sizes, on parsl_configs/local_htex.py.

    python workflows/bench_transfer.py [--models ...] [--modes ...] [--reps 3] [--rounds 3]

Each round is what a FedAvg round does with the weights: the controller sends the global model to
4 site apps, each resolves it and puts it back as its update (no training: the weights of the
named model move unchanged), the controller hands the 4 results to the real aggregate app, which
resolves the updates one at a time, averages them (``weighted_mean``) and puts the new global
model. Apps, stores and Parsl executors are the project's own; only the training is left out.

Per round it records the controller's round time (first train submitted -> aggregate result
received, one clock), the aggregator's averaging time (measured in the aggregate app), and the
communication cost = round time - averaging time. Store reads and writes are also timed where
they happen (in the apps). Once per model and mode it measures the bytes Parsl serializes for a
train task and an aggregate task (``pack_apply_message`` on the function and arguments the
controller submits) and for their results (``serialize`` on what the controller receives).
Modes run interleaved, their order rotated every repetition; the printed figures are medians over
all measured rounds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import parsl
from parsl import python_app
from parsl.app.python import PythonApp
from parsl.serialize import pack_apply_message, serialize
from proxyflox.bench import (
    DOCS,
    MODEL_SPECS,
    local_endpoints,
    median,
    print_machine,
    redis_server,
    relay_train,
    synthetic_init,
    write_csv,
)
from proxystore.proxy import Proxy, is_resolved
from proxystore.store.base import Store

from proxyflox.apps import aggregate_updates, train_site
from proxyflox.controller import aggregation_input
from proxyflox.settings import ExperimentConfig, SiteOptions, StoreSettings, merge_site_options
from proxyflox.sites import load_deployment, site_executor_labels
from proxyflox.stores import BACKENDS, evict_weights, open_store
from proxyflox.strategies import build_strategy

MODES = ("direct", "file", "redis", "endpoint")
DEFAULT_MODELS = ("floor", "mobilenet-0.4", "mobilenet-1.0", "resnet18", "resnet50")
#: What the targets say: proxies >= 3x faster than direct from this size, never slower at ~2 MB.
LARGE_MB, SMALL_MB, SPEEDUP_TARGET, BYTES_TARGET = 40.0, 3.0, 3.0, 4096
PARSL_BUFFER_THRESHOLD = 1 << 20  # what HighThroughputExecutor.submit passes


@dataclass
class Mode:
    """One way of moving weights: the experiment settings the apps get, and the open store."""

    name: str
    config: ExperimentConfig
    store: Store[Any] | None
    options: dict[str, SiteOptions]

    @property
    def store_config(self) -> Any:
        return self.store.config() if self.store is not None else None


@dataclass
class Apps:
    init: Any
    train: dict[str, Any]
    aggregate: Any
    #: The real app functions as Parsl ships them, for counting the bytes of a task.
    real_train: Any
    real_aggregate: Any


def open_modes(
    names: list[str], deployment_options: Any, tmp: Path, stack: ExitStack, labels: list[str]
) -> dict[str, Mode]:
    """The stores of every mode (starting redis-server, relay and endpoints as needed)."""
    modes: dict[str, Mode] = {}
    base = ExperimentConfig(sites=len(labels) - 1)
    for name in names:
        if name == "direct":
            config = replace(base, transfer="direct")
        elif name == "file":
            config = replace(base, store=StoreSettings(directory=str(tmp / "file-store")))
        elif name == "redis":
            port = stack.enter_context(redis_server())
            config = replace(base, store=StoreSettings(backend="redis", port=port))
        elif name == "endpoint":
            path = stack.enter_context(local_endpoints(tmp / "endpoints", labels))
            config = replace(
                base, store=StoreSettings(backend="endpoint", endpoints_file=str(path))
            )
        else:
            raise SystemExit(f"unknown mode {name!r}; known: {', '.join(MODES)}")
        options = deployment_options(config)
        store = None
        if config.transfer == "proxy":
            backend = BACKENDS[config.store.backend]
            extra = backend.site_options(config.store)
            options = {
                label: merge_site_options(extra.get(label, SiteOptions()), site)
                for label, site in options.items()
            }
            store = open_store(config.store, tmp, f"bench-{name}-{uuid.uuid4().hex[:8]}")
            stack.callback(store.close)
        modes[name] = Mode(name, config, store, options)
    return modes


def evict(mode: Mode, *results: dict[str, Any]) -> None:
    """Controller: delete the results' objects by key, never reading them."""
    if mode.store is None:
        return
    for result in results:
        evict_weights(mode.store, result["weights"])


def task_bytes(apps: Apps, mode: Mode, round_args: dict[str, Any]) -> dict[str, int]:
    """Bytes Parsl serializes for one train and one aggregate task and their results."""
    train_args, aggregate_args, aggregate_kwargs = (
        round_args["train_args"],
        round_args["aggregate_args"],
        round_args["aggregate_kwargs"],
    )
    counts = {
        "train_task_bytes": len(
            pack_apply_message(apps.real_train, train_args, {}, PARSL_BUFFER_THRESHOLD)
        ),
        "train_result_bytes": len(serialize(round_args["update"], PARSL_BUFFER_THRESHOLD)),
        "aggregate_task_bytes": len(
            pack_apply_message(
                apps.real_aggregate, aggregate_args, aggregate_kwargs, PARSL_BUFFER_THRESHOLD
            )
        ),
        "aggregate_result_bytes": len(serialize(round_args["new_global"], PARSL_BUFFER_THRESHOLD)),
    }
    if mode.name != "direct" and mode.name not in PROFILED:
        PROFILED[mode.name] = bytes_profile(apps, round_args)
    return counts


#: Per store mode: what the bytes of a train task and an aggregate task are made of.
PROFILED: dict[str, list[tuple[str, int]]] = {}


def bytes_profile(apps: Apps, round_args: dict[str, Any]) -> list[tuple[str, int]]:
    """Bytes of each part of a train task and an aggregate task, each part serialized alone
    (so the parts add up to about, not exactly, the whole message)."""
    (config, _site, _n, _round, global_model, store_config, options, instructions) = round_args[
        "train_args"
    ]
    proxy = global_model["weights"]
    factory = object.__getattribute__(proxy, "__proxy_factory__")
    cached_hash = object.__getattribute__(proxy, "__proxy_default_hash__")
    updates = round_args["aggregate_args"][2:]

    def size(value: Any) -> int:
        return len(serialize({"x": value})) - len(serialize({"x": None}))

    parts = [
        (
            "train task: function (Parsl's wrapper of train_site, by value)",
            len(serialize(apps.real_train)),
        ),
        ("train task: ExperimentConfig", size(config)),
        ("train task: global-model dict", size(dict(global_model))),
        ("  of which the weights proxy", size({"w": proxy}) - size({"w": None})),
        ("    proxy: its store key", size(factory.key)),
        ("    proxy: its StoreConfig copy", size(factory.store_config)),
        ("    proxy: cached hash (TypeError with traceback)", size(cached_hash)),
        ("train task: StoreConfig argument", size(store_config)),
        ("train task: SiteOptions + instructions + ints", size((options, instructions, 0, 4, 1))),
        (
            "aggregate task: function (wrapper of aggregate_updates)",
            len(serialize(apps.real_aggregate)),
        ),
        ("aggregate task: each update dict", size(dict(updates[0]))),
        ("aggregate task: keyword arguments", size(round_args["aggregate_kwargs"])),
    ]
    return parts


def run_block(
    apps: Apps,
    mode: Mode,
    model: str,
    labels: list[str],
    aggregator: str,
    rounds: int,
    warmup: int,
    rep: int,
    count_bytes: bool,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rounds of one model in one mode; one row per measured round, and the bytes per task."""
    config, store_config = mode.config, mode.store_config
    strategy = build_strategy(config.strategy)
    instructions = {"update_kind": strategy.update_kind}
    global_model = apps.init(model, store_config, mode.options[aggregator]).result()
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for round_number in range(1, warmup + rounds + 1):
        train_args = [
            (
                config,
                site,
                len(labels),
                round_number,
                global_model,
                store_config,
                mode.options[label],
                instructions,
            )
            for site, label in enumerate(labels)
        ]
        aggregate_kwargs = {
            "staleness": [],
            "state": None,
            "store_config": store_config,
            "save_path": None,
            "checkpoint_dir": None,
            "options": mode.options[aggregator],
        }
        start = time.perf_counter()
        futures = [apps.train[label](*args) for label, args in zip(labels, train_args, strict=True)]
        updates = [future.result() for future in futures]
        inputs = [aggregation_input(update) for update in updates]
        aggregate = apps.aggregate(strategy, global_model, *inputs, **aggregate_kwargs)
        new_global = aggregate.result()
        round_seconds = time.perf_counter() - start

        for result in (*updates, new_global):
            ref = result["weights"]
            if isinstance(ref, Proxy) and is_resolved(ref):
                raise AssertionError("the controller resolved a weights proxy")
        if count_bytes and round_number == warmup + 1:
            counts = task_bytes(
                apps,
                mode,
                {
                    "train_args": train_args[0],
                    "update": updates[0],
                    "new_global": new_global,
                    "aggregate_args": (strategy, global_model, *inputs),
                    "aggregate_kwargs": aggregate_kwargs,
                },
            )
        evict(mode, global_model, *updates)
        global_model = new_global
        if round_number <= warmup:
            continue
        site_store = [u["resolve_seconds"] + u["put_seconds"] for u in updates]
        rows.append(
            {
                "model": model,
                "model_mb": new_global["model_bytes"] / 1e6,
                "mode": mode.name,
                "rep": rep,
                "round": round_number - warmup,
                "round_seconds": round_seconds,
                "aggregate_seconds": new_global["aggregate_seconds"],
                "comm_seconds": round_seconds - new_global["aggregate_seconds"],
                "site_resolve_seconds_max": max(u["resolve_seconds"] for u in updates),
                "site_put_seconds_max": max(u["put_seconds"] for u in updates),
                "site_store_seconds_max": max(site_store),
                "aggregate_resolve_seconds": new_global["resolve_seconds"],
                "aggregate_put_seconds": new_global["put_seconds"],
                "store_seconds_critical": max(site_store)
                + new_global["resolve_seconds"]
                + new_global["put_seconds"],
            }
        )
    evict(mode, global_model)
    return rows, counts


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
            for key in (
                "round_seconds",
                "comm_seconds",
                "aggregate_seconds",
                "site_resolve_seconds_max",
                "site_put_seconds_max",
                "aggregate_resolve_seconds",
                "aggregate_put_seconds",
                "store_seconds_critical",
            ):
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
        if e["mode"] not in proxies:
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
        biggest = max(
            e.get(k, 0)
            for k in (
                "train_task_bytes",
                "aggregate_task_bytes",
                "train_result_bytes",
                "aggregate_result_bytes",
            )
        )
        if biggest > BYTES_TARGET:
            lines.append(
                f"{e['mode']} at {e['model_mb']:.1f} MB: largest Parsl message "
                f"{biggest:,} B (target <= {BYTES_TARGET:,} B): MISSED"
            )
    for mode, parts in PROFILED.items():
        print(f"\nbytes profile, {mode} store (each part serialized alone):")
        for what, count in parts:
            print(f"  {what:<62}{count:>7,}")
    print("\ntargets:")
    for line in lines:
        print("  " + line)
    return lines


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
        if mode != "direct":
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
    axes[2].axhline(BYTES_TARGET, color="grey", linestyle="--", label="4 KB target")
    axes[2].set(
        xscale="log",
        yscale="log",
        xlabel="model size (MB)",
        ylabel="bytes Parsl serializes per task",
        title="Parsl payload per task",
    )
    for axis in axes:
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        choices=list(MODEL_SPECS),
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
    tmp = Path(tempfile.mkdtemp(prefix="proxyflox-bench-transfer-"))
    deployment = load_deployment(args.config)
    deployment.parsl_config.run_dir = str(tmp / "parsl")
    deployment.parsl_config.initialize_logging = not args.no_parsl_log
    aggregator = "aggregator"
    labels = site_executor_labels(deployment.parsl_config, aggregator)
    rows: list[dict[str, Any]] = []
    counts: dict[tuple[str, str], dict[str, int]] = {}
    try:
        with ExitStack() as stack:
            modes = open_modes(
                args.modes, deployment.options_for, tmp, stack, [*labels, aggregator]
            )
            dfk = parsl.load(deployment.parsl_config)
            stack.callback(parsl.clear)
            stack.callback(dfk.cleanup)
            apps = Apps(
                init=python_app(synthetic_init, executors=[aggregator]),
                train={label: python_app(relay_train, executors=[label]) for label in labels},
                aggregate=python_app(aggregate_updates, executors=[aggregator]),
                real_train=PythonApp(train_site, executors=[labels[0]]).func,
                real_aggregate=PythonApp(aggregate_updates, executors=[aggregator]).func,
            )
            print(
                f"starting workers; modes {', '.join(modes)}; models {', '.join(args.models)}",
                flush=True,
            )
            for mode in modes.values():  # warm every worker and store connection
                run_block(apps, mode, "floor", labels, aggregator, 1, 1, -1, False)
            for rep in range(args.reps):
                for model in args.models:
                    order = (
                        args.modes[rep % len(args.modes) :] + args.modes[: rep % len(args.modes)]
                    )
                    for name in order:
                        block, block_counts = run_block(
                            apps,
                            modes[name],
                            model,
                            labels,
                            aggregator,
                            args.rounds,
                            args.warmup,
                            rep,
                            (model, name) not in counts,
                        )
                        if block_counts:
                            counts[(model, name)] = block_counts
                        rows.extend(block)
                        print(
                            f"rep {rep + 1}/{args.reps} {model:<16} {name:<9} comm "
                            + " ".join(f"{r['comm_seconds']:.3f}" for r in block),
                            flush=True,
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
