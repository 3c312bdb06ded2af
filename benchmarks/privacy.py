"""Accuracy against privacy spent: DP-FedAvg on digits for several noise multipliers.

    python -m benchmarks.privacy [--noise 0 0.3 0.5 1 2 4] [--sites 100] [--clients 20]
        [--rounds 30] [--clip-norm 0.5] [--local-epochs 5] [--seed 0]

(from the project root). Every run is the default experiment (digits, IID, the default CNN) with
``strategy.name: dpfedavg`` and fixed clipping, on ``parsl_configs/local.py`` (threads in this
process; privacy does not depend on where the apps run), split over more sites than the default
4: the noise on the mean of the changes has stddev ``z C / m``, so it shrinks with the sites per
round ``m``, and sampling ``m`` of ``N`` sites (``q = m / N < 1``) amplifies privacy. The
defaults split digits' 1,437 training samples over 100 sites (14 each) and sample 20 per round
(q = 0.2): the noise on each coordinate of the mean is ``z C / 20``. With 14 samples a local
epoch is one batch, hence 5 epochs; the clip norm 0.5 is about the median change of a site in
the first round (0.38-0.95 measured). Noise multiplier 0 is clipping alone (epsilon infinite).
Plain FedAvg on the same split is the reference. A last run is the default experiment itself
(4 sites, all sampled) with noise multiplier 1.0, whose epsilon after 10 rounds the docs report.

Writes ``docs/privacy.csv`` (one row per run and round: noise multiplier, round, epsilon at the
configured delta, accuracy and loss on the global test set) and ``docs/privacy.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import DOCS, print_machine, write_csv
from proxyflox.controller import run_federation
from proxyflox.results import create_run_dir
from proxyflox.settings import ExperimentConfig, load_experiment, to_yaml
from proxyflox.sites import load_deployment
from tests.helpers import DEFAULT_EXPERIMENT


def run(overrides: dict[str, Any], runs_dir: Path) -> tuple[ExperimentConfig, list[dict[str, Any]]]:
    """One run of the default experiment with ``overrides``; its ``rounds.csv`` rows."""
    config = load_experiment(DEFAULT_EXPERIMENT, {**overrides, "runs_dir": str(runs_dir)})
    deployment = load_deployment("local.py")
    run_dir = create_run_dir(config.runs_dir, config.name)
    (run_dir / "config.yaml").write_text(to_yaml(config, {"parsl_config": str(deployment.path)}))
    result = run_federation(config, deployment, run_dir, progress=lambda line: None)
    return config, [dict(row) for row in result.rounds]


def series_rows(label: str, z: float | None, rows: Sequence[dict[str, Any]]) -> list[dict]:
    """``privacy.csv``'s rows of one run."""
    return [
        {
            "run": label,
            "noise_multiplier": "" if z is None else z,
            "round": int(row["round"]),
            "epsilon": float(row.get("epsilon", math.inf)),
            "accuracy": float(row["accuracy"]),
            "loss": float(row["loss"]),
        }
        for row in rows
    ]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """``privacy.csv``'s rows, numbers as numbers."""
    with open(path, newline="") as file:
        return [
            row
            | {"round": int(row["round"])}
            | {key: float(row[key]) for key in ("epsilon", "accuracy", "loss")}
            for row in csv.DictReader(file)
        ]


def swept_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sweep's rows (the default experiment's run is reported, not drawn)."""
    return [row for row in rows if not row["run"].startswith("default")]


def plot(rows: Sequence[dict[str, Any]], title: str, out: Path) -> None:
    """Accuracy against epsilon (each point a round) and against rounds, one line per run."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 5), layout="constrained")
    by_epsilon, by_round = figure.subplots(1, 2)
    for index, label in enumerate(dict.fromkeys(row["run"] for row in rows)):
        color = f"C{index}"  # one color per run in both panels
        series = [row for row in rows if row["run"] == label]
        rounds = [row["round"] for row in series]
        accuracy = [row["accuracy"] for row in series]
        by_round.plot(rounds, accuracy, marker="o", markersize=3, label=label, color=color)
        finite = [row for row in series if math.isfinite(row["epsilon"])]
        if finite:
            by_epsilon.plot(
                [row["epsilon"] for row in finite],
                [row["accuracy"] for row in finite],
                marker="o",
                markersize=3,
                label=label,
                color=color,
            )
        else:  # no noise: no privacy; its final accuracy is the line to compare with
            by_epsilon.axhline(
                accuracy[-1], linestyle="--", linewidth=1, label=f"{label}: final", color=color
            )
    by_epsilon.set_xscale("log")
    by_epsilon.set_xlabel("epsilon spent so far (log scale)")
    by_epsilon.set_ylabel("accuracy on the global test set")
    by_epsilon.set_title("accuracy against privacy spent (one point per round)")
    by_round.set_xlabel("round")
    by_round.set_ylabel("accuracy on the global test set")
    by_round.set_title("accuracy per round")
    for axes in (by_epsilon, by_round):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--clients", type=int, default=20, help="sites sampled per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clip-norm", type=float, default=0.5)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DOCS / "privacy"), help="path less .csv/.png")
    parser.add_argument("--replot", action="store_true", help="only redraw OUT.png from OUT.csv")
    args = parser.parse_args(argv)
    out = Path(args.out)
    title = (
        f"digits, {args.sites} IID sites, {args.clients} per round "
        f"(q = {min(1.0, args.clients / args.sites):g}), {args.local_epochs} local epochs, "
        f"fixed clip norm {args.clip_norm:g}, delta 1e-5"
    )
    if args.replot:
        plot(swept_rows(read_rows(out.with_suffix(".csv"))), title, out.with_suffix(".png"))
        return 0
    print_machine()
    split = {
        "sites": args.sites,
        "clients_per_round": args.clients,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "seed": args.seed,
    }
    runs_dir = Path(tempfile.mkdtemp(prefix="bench-privacy-"))
    rows: list[dict[str, Any]] = []
    try:
        _, plain = run({**split, "name": "fedavg"}, runs_dir)
        rows += series_rows("fedavg (no clipping, no noise)", None, plain)
        print(f"fedavg: final accuracy {plain[-1]['accuracy']:.4f}", flush=True)
        for z in args.noise:
            private = {
                **split,
                "name": f"dp-z{z:g}",
                "strategy.name": "dpfedavg",
                "strategy.noise_multiplier": z,
                "strategy.clip_norm": args.clip_norm,
            }
            _, result = run(private, runs_dir)
            label = f"dpfedavg z={z:g}" + (" (clipping only)" if z == 0 else "")
            rows += series_rows(label, z, result)
            print(
                f"dpfedavg z={z:g}: final accuracy {result[-1]['accuracy']:.4f}, "
                f"epsilon {float(result[-1]['epsilon']):.4g}",
                flush=True,
            )
        # The default experiment: 4 sites, all sampled (q = 1), 10 rounds, z = 1.
        default_z = 1.0
        config, default = run(
            {"name": "dp-default", "strategy.name": "dpfedavg",
             "strategy.noise_multiplier": default_z},
            runs_dir,
        )  # fmt: skip
        rows += series_rows(f"default experiment, dpfedavg z={default_z:g}", default_z, default)
        print(
            f"default experiment ({config.sites} sites, all sampled, {config.rounds} rounds), "
            f"dpfedavg z={default_z:g}: epsilon {float(default[-1]['epsilon']):.4g} at delta "
            f"{config.strategy.delta:g}, final accuracy {default[-1]['accuracy']:.4f}",
            flush=True,
        )
    finally:
        shutil.rmtree(runs_dir, ignore_errors=True)
    write_csv(out.with_suffix(".csv"), rows)
    plot(swept_rows(rows), title, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
