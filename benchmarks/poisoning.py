"""One poisoning site among eight: FedAvg collapses, the robust strategies keep learning.

    python -m benchmarks.poisoning [--experiment experiments/digits_fedavg.yaml] [--rounds 20]
        [--strategies fedavg fedmedian fedtrimmedavg krum multikrum] [--seeds 0]

Digits over 8 sites (the experiment's partition; IID by default), on threads like
``parsl_configs/local.py`` but with one site executor per site, so that the attack reaches one
site. Every strategy runs twice per seed with ``strategy.byzantine: 1`` and ``min_clients: 8``:
clean, and with ``site_options.site-3.attack: sign_flip`` and ``attack_scale: 10`` (site 3
sends ``global - 10 * (trained - global)``). Printed and written to ``docs/poisoning.csv``: each
run's final accuracy on the global test set, the attacked run against its own clean run and
against clean FedAvg, and whether it holds (at most 2 points below its clean run);
``docs/poisoning.png`` draws accuracy per round of the first seed.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

from benchmarks.common import DOCS, ROOT, print_machine, write_csv
from proxyflox.controller import run_federation
from proxyflox.results import create_run_dir
from proxyflox.settings import load_experiment
from proxyflox.sites import Deployment

SITES = 8
ATTACKER = "site-3"
ATTACK = {
    f"site_options.{ATTACKER}.attack": "sign_flip",
    f"site_options.{ATTACKER}.attack_scale": "10",
}
STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum")
#: A strategy "holds" when its attacked run ends at most this far below its clean run.
TOLERANCE = 0.02


def deployment() -> Deployment:
    """Threads in this process: one site executor per site, and the aggregator's."""
    executors = [ThreadPoolExecutor(label=f"site-{i}", max_threads=1) for i in range(SITES)]
    config = Config(
        executors=[*executors, ThreadPoolExecutor(label="aggregator", max_threads=1)],
        strategy="none",
    )
    return Deployment(config, Path("poisoning-threads"))


def run_once(
    experiment: Path, strategy: str, attacked: bool, seed: int, rounds: int, workdir: Path
) -> tuple[list[dict[str, str]], float]:
    """One run; its ``rounds.csv`` rows and wall seconds."""
    overrides: dict[str, Any] = {
        "name": f"poisoning-{strategy}-{'attacked' if attacked else 'clean'}",
        "sites": str(SITES),
        "rounds": str(rounds),
        "seed": str(seed),
        "min_clients": str(SITES),
        "strategy.name": strategy,
        "strategy.byzantine": "1",
        "runs_dir": str(workdir / "runs"),
        **(ATTACK if attacked else {}),
    }
    config = load_experiment(experiment, overrides)
    run_dir = create_run_dir(config.runs_dir, config.name)
    start = time.perf_counter()
    run_federation(config, deployment(), run_dir, progress=lambda line: None)
    seconds = time.perf_counter() - start
    with open(run_dir / "rounds.csv", newline="") as file:
        return list(csv.DictReader(file)), seconds


def plot(per_round: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy per round, clean and attacked side by side (house style: Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.4), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    seed = min(row["seed"] for row in per_round)
    strategies = list(dict.fromkeys(row["strategy"] for row in per_round))

    def series(strategy: str, attacked: bool) -> tuple[list[int], list[float]]:
        rows = [
            row
            for row in per_round
            if (row["strategy"], row["attacked"], row["seed"]) == (strategy, attacked, seed)
        ]
        return [row["round"] for row in rows], [row["accuracy"] for row in rows]

    for axes, attacked in zip(panels, (False, True), strict=True):
        for index, strategy in enumerate(strategies):
            rounds, accuracy = series(strategy, attacked)
            axes.plot(rounds, accuracy, marker="o", markersize=3, color=f"C{index}", label=strategy)
        if attacked and "fedavg" in strategies:
            rounds, accuracy = series("fedavg", False)
            axes.plot(rounds, accuracy, "--", color="gray", linewidth=1, label="fedavg, clean")
        axes.set_title(f"site 3 of {SITES} sends -10x its change" if attacked else "clean")
        axes.set_xlabel("round")
        axes.set_xticks(rounds[:: max(1, len(rounds) // 10)])
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small", loc="lower right")
    panels[0].set_ylabel("accuracy on the global test set")
    figure.suptitle(f"{title} (seed {seed})")
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiment", type=Path, default=ROOT / "experiments" / "digits_fedavg.yaml"
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)

    print_machine()
    summary: list[dict[str, Any]] = []
    per_round: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="proxyflox-bench-poisoning-") as tmp:
        for seed in args.seeds:
            final: dict[tuple[str, bool], float] = {}
            for strategy in args.strategies:
                for attacked in (False, True):
                    rows, seconds = run_once(
                        args.experiment, strategy, attacked, seed, args.rounds, Path(tmp)
                    )
                    final[strategy, attacked] = float(rows[-1]["accuracy"])
                    per_round += [
                        {"seed": seed, "strategy": strategy, "attacked": attacked,
                         "round": int(row["round"]), "accuracy": float(row["accuracy"])}
                        for row in rows
                    ]  # fmt: skip
                    print(
                        f"seed {seed} {strategy:14s} {'attacked' if attacked else 'clean':8s}: "
                        f"final accuracy {final[strategy, attacked]:.4f} ({seconds:.1f} s)",
                        flush=True,
                    )
            for strategy in args.strategies:
                clean, attacked_accuracy = final[strategy, False], final[strategy, True]
                summary.append(
                    {
                        "experiment": args.experiment.stem,
                        "seed": seed,
                        "strategy": strategy,
                        "rounds": args.rounds,
                        "clean_accuracy": clean,
                        "attacked_accuracy": attacked_accuracy,
                        "attacked_minus_clean": attacked_accuracy - clean,
                        "attacked_minus_fedavg_clean": attacked_accuracy
                        - final.get(("fedavg", False), float("nan")),
                        "holds": attacked_accuracy >= clean - TOLERANCE,
                    }
                )
    print(
        f"\n{'strategy':14s} {'seed':>4s} {'clean':>7s} {'attacked':>9s} {'vs clean':>9s} "
        f"{'vs fedavg clean':>16s}"
    )
    for row in summary:
        print(
            f"{row['strategy']:14s} {row['seed']:4d} {row['clean_accuracy']:7.4f} "
            f"{row['attacked_accuracy']:9.4f} {row['attacked_minus_clean']:+9.4f} "
            f"{row['attacked_minus_fedavg_clean']:+16.4f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "poisoning.csv", summary)
    plot(per_round, args.out / "poisoning.png", f"{args.experiment.stem}, {SITES} sites")
    print(f"wrote {args.out / 'poisoning.csv'} and {args.out / 'poisoning.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
