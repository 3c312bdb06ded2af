"""What the workflow costs: ProxyFlox rounds on parsl_configs/local_htex.py against the same local
training as a bare PyTorch loop with the same number of worker processes.

    python -m benchmarks.overhead [--workloads digits mnist] [--rounds 8] [--reps 2]

(from the project root: the Parsl workers import ``benchmarks`` for the timed app bodies).

Both sides train the same sites (same partitions, model, epochs, batch size, torch threads,
shuffling seeds) with the project's ``train_local``:

- bare: one process per site (4, like local_htex.py's 4 site workers), started once; every round
  the main process sends them the global model through a pipe, each loads it and trains (timed in
  that process), and the main process averages (``weighted_mean``) and evaluates, timing both.
  The ideal round is the slowest site's training + averaging + evaluation;
- ProxyFlox: the project's run (``run_federation``) on local_htex.py, with timed app bodies
  (``AppBodies``: the real ones, also reporting their whole duration measured in their own
  process) and a ``RunObserver`` that keeps what they report.

The ratio is ProxyFlox's median round time (``round_seconds`` of rounds.csv) over the bare loop's
median ideal round, both without round 1 (worker start-up). Where the time goes comes from the
apps' own timings: training, store reads and writes, averaging, checkpoint, evaluation, the rest of
each app's body, and what is left of the round outside the apps (Parsl's dispatch of the tasks
and the controller). Bare and ProxyFlox runs alternate, ``--reps`` times each.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    DOCS,
    ROOT,
    RoundRecord,
    median,
    print_machine,
    run_timed,
    write_csv,
)
from proxyflox.apps import load_split, new_model, shuffle_seed, site_data
from proxyflox.controller.planner import data_spec, model_spec
from proxyflox.data import TEST, dataset_info
from proxyflox.models.weights import load_weights, weights_of
from proxyflox.settings import ExperimentConfig, load_experiment
from proxyflox.sites import load_deployment
from proxyflox.strategies import Update, weighted_mean
from proxyflox.training import evaluate, train_local
from tests.tiny_datasets import write_mnist

TARGET = 1.10
#: name -> (description, settings over the default experiment)
WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": (
        "the default experiment: digits, small CNN (0.6 MB), 4 sites x 359 samples, 1 epoch",
        {},
    ),
    "mnist": (
        "28x28 MNIST-format data, small CNN (6.5 MB), 4 sites x 1,000 samples, 1 epoch, "
        "lr 0.01, 1,000 test images",
        {"dataset": "mnist", "samples_per_site": 1000, "lr": 0.01},
    ),
}


def workload_config(name: str, rounds: int, data_dir: Path, runs_dir: Path) -> ExperimentConfig:
    settings = dict(WORKLOADS[name][1])
    if settings.get("dataset") == "mnist":
        settings["data_dir"] = str(data_dir)
    overrides = {"rounds": rounds, "runs_dir": str(runs_dir), "name": f"overhead-{name}"}
    return load_experiment(ROOT / "experiments" / "digits_fedavg.yaml", overrides | settings)


# ---------------------------------------------------------------------------------------------
# The bare PyTorch loop


def bare_site(config: ExperimentConfig, site: int, num_sites: int, pipe: Connection) -> None:
    """One site's process: train on every global model received, timing the training."""
    torch.set_num_threads(config.torch_threads)
    spec = data_spec(config, num_sites)
    data = site_data(spec, site)
    model = new_model(model_spec(config), dataset_info(config.dataset, config.data_dir))
    while True:
        message = pipe.recv()
        if message is None:
            return
        round_number, weights = message
        load_weights(model, weights)
        start = time.perf_counter()
        train_local(
            model,
            data,
            epochs=config.local_epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            momentum=config.momentum,
            shuffle_seed=shuffle_seed(config.seed, round_number, site),
        )
        pipe.send((weights_of(model), len(data), time.perf_counter() - start))


def run_bare(config: ExperimentConfig) -> list[dict[str, Any]]:
    """The bare loop; one row per round with the ideal round and its parts."""
    num_sites = config.sites or 4
    torch.set_num_threads(config.torch_threads)
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for site in range(num_sites):
        mine, theirs = context.Pipe()
        process = context.Process(target=bare_site, args=(config, site, num_sites, theirs))
        process.start()
        pipes.append(mine)
        processes.append(process)
    test = load_split(data_spec(config, num_sites), TEST)
    model = new_model(model_spec(config), dataset_info(config.dataset, config.data_dir))
    global_weights = weights_of(model)
    rows = []
    try:
        for round_number in range(1, config.rounds + 1):
            start = time.perf_counter()
            for pipe in pipes:
                pipe.send((round_number, global_weights))
            results = [pipe.recv() for pipe in pipes]
            aggregate_start = time.perf_counter()
            global_weights = weighted_mean(Update(w, n) for w, n, _ in results)
            aggregate_seconds = time.perf_counter() - aggregate_start
            load_weights(model, global_weights)
            evaluate_start = time.perf_counter()
            accuracy, _ = evaluate(model, test)
            evaluate_seconds = time.perf_counter() - evaluate_start
            train_max = max(seconds for _, _, seconds in results)
            rows.append(
                {
                    "round": round_number,
                    "train_seconds_max": train_max,
                    "aggregate_seconds": aggregate_seconds,
                    "evaluate_seconds": evaluate_seconds,
                    "ideal_seconds": train_max + aggregate_seconds + evaluate_seconds,
                    "wall_seconds": time.perf_counter() - start,
                    "accuracy": accuracy,
                }
            )
    finally:
        for pipe in pipes:
            pipe.send(None)
        for process in processes:
            process.join(timeout=30)
    return rows


# ---------------------------------------------------------------------------------------------
# ProxyFlox


def run_proxyflox(config: ExperimentConfig, run_root: Path) -> list[dict[str, Any]]:
    """The project's round loop on local_htex.py; one row per round with where the time went,
    and the round trip of a no-op app on a site executor and on the aggregator's."""
    deployment = load_deployment("local_htex.py")
    run_dir = run_root / f"run-{time.time_ns()}"
    run_dir.mkdir(parents=True)
    records, placement, latency = run_timed(
        config,
        deployment,
        run_dir,
        progress=lambda line: None,
        probe_labels=["site-0", "aggregator"],
    )
    noop = median(list(latency.values()))
    return [breakdown(record, placement) | {"noop_app_seconds": noop} for record in records]


def breakdown(record: RoundRecord, placement: list[str]) -> dict[str, Any]:
    """A round's time split by where it went, every part measured in its own process."""
    row = record.row
    slowest = max(record.trains, key=lambda t: t["app_seconds"])
    aggregate, evaluation = record.aggregate, record.evaluate
    critical = record.critical_path(placement)
    site_other = slowest["app_seconds"] - sum(
        slowest[k] for k in ("resolve_seconds", "train_seconds", "put_seconds")
    )
    aggregate_other = aggregate["app_seconds"] - sum(
        aggregate[k]
        for k in ("resolve_seconds", "aggregate_seconds", "put_seconds", "checkpoint_seconds")
    )
    evaluate_other = evaluation["app_seconds"] - evaluation["evaluate_seconds"]
    return {
        "round": row["round"],
        "round_seconds": row["round_seconds"],
        "loop_seconds": record.loop_seconds,
        "train_seconds_max": row["train_seconds_max"],
        "slowest_site_train_seconds": slowest["train_seconds"],
        "slowest_site_resolve_seconds": slowest["resolve_seconds"],
        "slowest_site_put_seconds": slowest["put_seconds"],
        "slowest_site_other_seconds": site_other,
        "aggregate_resolve_seconds": aggregate["resolve_seconds"],
        "aggregate_seconds": aggregate["aggregate_seconds"],
        "aggregate_put_seconds": aggregate["put_seconds"],
        "checkpoint_seconds": aggregate["checkpoint_seconds"],
        "aggregate_other_seconds": aggregate_other,
        "evaluate_seconds": evaluation["evaluate_seconds"],
        "evaluate_other_seconds": evaluate_other,  # resolve + model build + test-set lookup
        "critical_path_seconds": critical,
        "outside_apps_seconds": row["round_seconds"] - critical,
        "after_round_seconds": record.loop_seconds - row["round_seconds"],
        "accuracy": row["accuracy"],
    }


# ---------------------------------------------------------------------------------------------


PARTS = (
    ("slowest_site_train_seconds", "site: training (slowest site)"),
    ("slowest_site_resolve_seconds", "site: resolve global model"),
    ("slowest_site_put_seconds", "site: put update"),
    ("slowest_site_other_seconds", "site: rest of the app (model build, load, data lookup)"),
    ("aggregate_resolve_seconds", "aggregator: fetch updates"),
    ("aggregate_seconds", "aggregator: averaging"),
    ("aggregate_put_seconds", "aggregator: put global model"),
    ("checkpoint_seconds", "aggregator: checkpoint"),
    ("aggregate_other_seconds", "aggregator: rest of the app"),
    ("evaluate_seconds", "evaluate: forward passes"),
    ("evaluate_other_seconds", "evaluate: resolve + model build"),
    ("outside_apps_seconds", "outside the apps: Parsl dispatch + controller"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=8, help="rounds per run (round 1 dropped)")
    parser.add_argument("--reps", type=int, default=2, help="bare/ProxyFlox runs, alternating")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)

    print_machine()
    tmp = Path(tempfile.mkdtemp(prefix="proxyflox-bench-overhead-"))
    all_rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    try:
        data_dir = tmp / "data"
        write_mnist(data_dir, train=4_000, test=1_000)
        for workload in args.workloads:
            config = workload_config(workload, args.rounds, data_dir, tmp / "runs")
            bare: list[dict[str, Any]] = []
            flox: list[dict[str, Any]] = []
            for rep in range(args.reps):
                rows = run_bare(config)
                bare += rows
                all_rows += [r | {"workload": workload, "side": "bare", "rep": rep} for r in rows]
                print(
                    f"{workload} rep {rep + 1} bare ideal "
                    + " ".join(f"{r['ideal_seconds']:.2f}" for r in rows[1:]),
                    flush=True,
                )
                rows = run_proxyflox(config, tmp / "runs")
                flox += rows
                all_rows += [
                    r | {"workload": workload, "side": "proxyflox", "rep": rep} for r in rows
                ]
                print(
                    f"{workload} rep {rep + 1} ProxyFlox round "
                    + " ".join(f"{r['round_seconds']:.2f}" for r in rows[1:]),
                    flush=True,
                )
            summary.append(summarize(workload, bare, flox))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for entry in summary:
        report(entry)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "bench_overhead.csv", summary)
    write_csv(args.out / "bench_overhead_rounds.csv", all_rows)
    plot(summary, args.out / "bench_overhead.png")
    print(
        f"\nwrote {args.out / 'bench_overhead.csv'}, bench_overhead_rounds.csv, bench_overhead.png"
    )
    return 0


def summarize(
    workload: str, bare: list[dict[str, Any]], flox: list[dict[str, Any]]
) -> dict[str, Any]:
    """Medians over rounds 2.. of every repetition."""
    bare = [r for r in bare if r["round"] > 1]
    flox = [r for r in flox if r["round"] > 1]
    entry: dict[str, Any] = {
        "workload": workload,
        "description": WORKLOADS[workload][0],
        "bare_rounds": len(bare),
        "proxyflox_rounds": len(flox),
    }
    for key in (
        "ideal_seconds",
        "train_seconds_max",
        "aggregate_seconds",
        "evaluate_seconds",
        "wall_seconds",
    ):
        entry[f"bare_{key}"] = median([r[key] for r in bare])
    summary_keys = [
        "round_seconds",
        "loop_seconds",
        "train_seconds_max",
        "critical_path_seconds",
        "noop_app_seconds",
    ]
    for key in [*summary_keys, "after_round_seconds", *(k for k, _ in PARTS)]:
        entry[f"proxyflox_{key}"] = median([r[key] for r in flox])
    entry["ratio"] = entry["proxyflox_round_seconds"] / entry["bare_ideal_seconds"]
    entry["ratio_loop"] = entry["proxyflox_loop_seconds"] / entry["bare_ideal_seconds"]
    entry["ratio_own_compute"] = entry["proxyflox_round_seconds"] / (
        entry["proxyflox_train_seconds_max"]
        + entry["proxyflox_aggregate_seconds"]
        + entry["proxyflox_evaluate_seconds"]
    )
    entry["accuracy_bare"] = median(
        [r["accuracy"] for r in bare if r["round"] == max(x["round"] for x in bare)]
    )
    entry["accuracy_proxyflox"] = median(
        [r["accuracy"] for r in flox if r["round"] == max(x["round"] for x in flox)]
    )
    return entry


def report(entry: dict[str, Any]) -> None:
    print(f"\n{entry['workload']}: {entry['description']}")
    print(
        f"  bare ideal round     {entry['bare_ideal_seconds']:.3f} s  (slowest site training "
        f"{entry['bare_train_seconds_max']:.3f} + averaging {entry['bare_aggregate_seconds']:.3f}"
        f" + evaluation {entry['bare_evaluate_seconds']:.3f}; bare loop wall "
        f"{entry['bare_wall_seconds']:.3f})"
    )
    print(
        f"  ProxyFlox round      {entry['proxyflox_round_seconds']:.3f} s  (whole controller "
        f"iteration incl. eviction and logs {entry['proxyflox_loop_seconds']:.3f} s)"
    )
    verdict = "met" if entry["ratio"] <= TARGET else "MISSED"
    print(
        f"  ratio                {entry['ratio']:.2f}x  (target <= {TARGET:.2f}x: {verdict}); "
        f"whole iteration {entry['ratio_loop']:.2f}x; against ProxyFlox's own training + "
        f"averaging + evaluation {entry['ratio_own_compute']:.2f}x"
    )
    print("  where a ProxyFlox round goes (medians, seconds):")
    for key, what in PARTS:
        print(f"    {what:<52}{entry[f'proxyflox_{key}']:>8.3f}")
    print(
        f"    {'after the round: eviction, CSV rows, checkpoint marker':<52}"
        f"{entry['proxyflox_after_round_seconds']:>8.3f}"
    )
    print(
        f"  a no-op Parsl app's round trip here: {entry['proxyflox_noop_app_seconds'] * 1e3:.1f} "
        "ms (a round waits for 2 app stages in a row: train, aggregate; evaluation overlaps "
        "the next round)"
    )
    print(
        f"  final accuracy: bare {entry['accuracy_bare']:.4f}, "
        f"ProxyFlox {entry['accuracy_proxyflox']:.4f}"
    )


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """Stacked bars: the bare ideal round and where a ProxyFlox round goes, per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4.5), squeeze=False)
    groups = {
        "training": ["slowest_site_train_seconds"],
        "store reads/writes": [
            "slowest_site_resolve_seconds",
            "slowest_site_put_seconds",
            "aggregate_resolve_seconds",
            "aggregate_put_seconds",
        ],
        "averaging": ["aggregate_seconds"],
        "evaluation": ["evaluate_seconds"],
        "checkpoint": ["checkpoint_seconds"],
        "rest of the apps": [
            "slowest_site_other_seconds",
            "aggregate_other_seconds",
            "evaluate_other_seconds",
        ],
        "outside the apps": ["outside_apps_seconds"],
    }
    bare_parts = {
        "training": "bare_train_seconds_max",
        "averaging": "bare_aggregate_seconds",
        "evaluation": "bare_evaluate_seconds",
    }
    colors = {group: f"C{index}" for index, group in enumerate(groups)}
    for axis, entry in zip(axes[0], summary, strict=True):
        for x, side in enumerate(("bare ideal", "ProxyFlox")):
            bottom = 0.0
            for group, keys in groups.items():
                if side == "bare ideal":
                    value = entry[bare_parts[group]] if group in bare_parts else 0.0
                else:
                    value = sum(entry[f"proxyflox_{k}"] for k in keys)
                axis.bar(
                    x, value, bottom=bottom, color=colors[group], label=group if x == 1 else None
                )
                bottom += value
        axis.set_xticks([0, 1], ["bare ideal", "ProxyFlox round"])
        axis.set_ylabel("seconds per round (median)")
        axis.set_title(f"{entry['workload']}: {entry['ratio']:.2f}x the ideal")
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
