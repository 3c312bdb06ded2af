"""How the controller scales with registered clients: 10,000 sites, 10 sampled per round, on
parsl_configs/local_htex.py.

    python -m benchmarks.scale [--sites 10000] [--clients-per-round 10] [--rounds 20]

(from the project root: the Parsl workers import ``benchmarks`` for the timed app bodies).

The run is the project's own (``run_federation``) on synthetic data in MNIST's format (60,000
training images: 6 per site; 500 test images) with the small CNN (6.5 MB); every site computes
its own share of the 10,000-way partition inside its train app. The app bodies are timed ones
(``AppBodies``: the real bodies, also reporting their whole duration measured in their own
process), and a ``RunObserver`` records every round.

Per round the controller records its resident set size (psutil; also its anonymous part, the
heap without mapped libraries) and its own CPU time. "Flat" means at most 5 MB of growth from
round 2 to the last round; after the last round the controller also asks glibc to return free
heap pages (``malloc_trim``) to tell freed-but-kept heap from memory still in use. Its
overhead: the controller's whole iteration for the round (sampling, submitting, waiting,
evicting, writing the CSV rows) minus the app time the round had to wait for, every part
measured in its own process: the busiest site executor (local_htex.py has 4 site executors with
one worker each, so their sampled sites train one after another), then aggregate, then evaluate.
That difference is the controller's own work plus Parsl's dispatch of the round's 12 tasks.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DOCS, median, print_machine, run_timed, write_csv
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from tests.tiny_datasets import write_mnist

OVERHEAD_TARGET = 1.0  # seconds per round
RSS_TOLERANCE_MB = 5.0  # "flat": at most this much growth over the run after round 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--train-samples", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)

    print_machine()
    tmp = Path(tempfile.mkdtemp(prefix="proxyflox-bench-scale-"))
    try:
        data_dir = tmp / "data"
        write_mnist(data_dir, train=args.train_samples, test=500)
        config = load_experiment(
            None,
            {
                "name": "scale",
                "dataset": "mnist",
                "data_dir": str(data_dir),
                "sites": args.sites,
                "clients_per_round": args.clients_per_round,
                "rounds": args.rounds,
                "runs_dir": str(tmp / "runs"),
                "store.directory": str(tmp / "store"),
            },
        )
        run_dir = tmp / "runs" / "scale"
        run_dir.mkdir(parents=True)
        records, placement, _ = run_timed(
            config, load_deployment("local_htex.py"), run_dir, progress=print, trim_heap=True
        )
        rows: list[dict[str, Any]] = []
        for record in records:
            critical = record.critical_path(placement)
            rows.append(
                {
                    "round": record.row["round"],
                    "sites": record.row["sites"],
                    "site_ids": record.row["site_ids"],
                    "controller_rss_mb": record.controller_rss / 1e6,
                    "controller_rss_anon_mb": record.controller_rss_anon / 1e6,
                    "controller_cpu_seconds": record.controller_cpu_seconds,
                    "loop_seconds": record.loop_seconds,
                    "round_seconds": record.row["round_seconds"],
                    "critical_path_seconds": critical,
                    "overhead_seconds": record.loop_seconds - critical,
                    "overhead_in_round_seconds": record.row["round_seconds"] - critical,
                    "accuracy": record.row["accuracy"],
                }
            )
        sites_rows = (run_dir / "sites.csv").read_text().count("\n") - 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    steady = [r for r in rows if r["round"] > 1]
    rss = np.array([r["controller_rss_mb"] for r in steady])
    slope = float(np.polyfit([r["round"] for r in steady], rss, 1)[0]) if len(steady) > 1 else 0.0
    growth = float(rss[-1] - rss[0])
    overhead = median([r["overhead_seconds"] for r in steady])
    worst = max(r["overhead_seconds"] for r in steady)
    summary = {
        "sites": args.sites,
        "clients_per_round": args.clients_per_round,
        "rounds": args.rounds,
        "sites_csv_rows": sites_rows,
        "controller_rss_mb_round1": rows[0]["controller_rss_mb"],
        "controller_rss_mb_round2": steady[0]["controller_rss_mb"],
        "controller_rss_mb_last": steady[-1]["controller_rss_mb"],
        "controller_rss_growth_mb_after_round2": growth,
        "controller_rss_slope_mb_per_round": slope,
        "controller_rss_anon_mb_round2": steady[0]["controller_rss_anon_mb"],
        "controller_rss_anon_mb_last": steady[-1]["controller_rss_anon_mb"],
        "controller_rss_mb_last_after_malloc_trim": records[-1].controller_rss_after_trim / 1e6,
        "overhead_seconds_median": overhead,
        "overhead_seconds_max": worst,
        "overhead_in_round_seconds_median": median(
            [r["overhead_in_round_seconds"] for r in steady]
        ),
        "controller_cpu_seconds_median": median([r["controller_cpu_seconds"] for r in steady]),
        "loop_seconds_median": median([r["loop_seconds"] for r in steady]),
        "critical_path_seconds_median": median([r["critical_path_seconds"] for r in steady]),
    }
    print(
        f"\n{args.sites:,} sites, {args.clients_per_round} per round, {args.rounds} rounds "
        f"({sites_rows} rows in sites.csv)"
    )
    print(
        f"{'round':>6}{'RSS MB':>9}{'anon MB':>9}{'CPU s':>8}{'iteration s':>13}{'apps s':>9}"
        f"{'overhead s':>12}"
    )
    for r in rows:
        print(
            f"{r['round']:>6}{r['controller_rss_mb']:>9.1f}{r['controller_rss_anon_mb']:>9.1f}"
            f"{r['controller_cpu_seconds']:>8.3f}"
            f"{r['loop_seconds']:>13.3f}{r['critical_path_seconds']:>9.3f}"
            f"{r['overhead_seconds']:>12.3f}"
        )
    print("\ntargets:")
    flat = abs(growth) <= RSS_TOLERANCE_MB
    print(
        f"  controller RSS flat over rounds 2-{args.rounds}: {rss[0]:.1f} -> {rss[-1]:.1f} MB "
        f"({growth:+.1f} MB, slope {slope:+.2f} MB/round): " + ("met" if flat else "MISSED")
    )
    print(
        f"  (after the last round, glibc's malloc_trim returned the controller's free heap: RSS "
        f"{summary['controller_rss_mb_last']:.1f} -> "
        f"{summary['controller_rss_mb_last_after_malloc_trim']:.1f} MB)"
    )
    print(
        f"  controller overhead per round < {OVERHEAD_TARGET:.0f} s: median {overhead:.3f} s, "
        f"max {worst:.3f} s (controller CPU {summary['controller_cpu_seconds_median']:.3f} s "
        "per round): " + ("met" if worst < OVERHEAD_TARGET else "MISSED")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "bench_scale_rounds.csv", rows)
    write_csv(args.out / "bench_scale.csv", [summary])
    plot(rows, args.out / "bench_scale.png")
    print(f"\nwrote {args.out / 'bench_scale.csv'}, bench_scale_rounds.csv, bench_scale.png")
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Controller RSS and overhead per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = [r["round"] for r in rows]
    left.plot(rounds, [r["controller_rss_mb"] for r in rows], marker="o", label="RSS")
    left.plot(rounds, [r["controller_rss_anon_mb"] for r in rows], marker="s",
              label="anonymous RSS (heap)")  # fmt: skip
    left.set(xlabel="round", ylabel="MB", title="controller memory")
    left.legend()
    left.set_ylim(bottom=0)
    right.plot(
        rounds[1:],
        [r["overhead_seconds"] for r in rows[1:]],
        marker="o",
        label="iteration - apps (overhead)",
    )
    right.plot(
        rounds[1:],
        [r["controller_cpu_seconds"] for r in rows[1:]],
        marker="s",
        label="controller CPU time",
    )
    right.axhline(OVERHEAD_TARGET, color="grey", linestyle="--", label="1 s target")
    right.set(xlabel="round", ylabel="seconds", title="controller cost per round")
    right.set_ylim(bottom=0)
    right.legend()
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
