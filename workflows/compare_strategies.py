#!/usr/bin/env python3
"""Run one experiment under several strategies and plot them on one figure.

    python workflows/compare_strategies.py [--experiment experiments/digits_dirichlet.yaml]
        [--config local.py] [--strategies fedavg fedprox fedadam fedbuff]
        [--out docs/strategies.png]

Each strategy runs with the experiment's settings (its ``strategy`` section supplies the
hyperparameters); the runs land in the experiment's ``runs_dir`` as usual, and the figure shows
accuracy per round (per global version for asynchronous strategies) and against wall time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxyflox.controller import run_federation
from proxyflox.errors import ConfigError
from proxyflox.plot import plot_comparison
from proxyflox.results import create_run_dir
from proxyflox.settings import load_experiment, to_yaml
from proxyflox.sites import load_deployment

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "digits_dirichlet.yaml"))
    parser.add_argument("--config", default="local.py", help="Parsl config (default local.py)")
    parser.add_argument(
        "--strategies", nargs="+", default=["fedavg", "fedprox", "fedadam", "fedbuff"]
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "strategies.png"))
    args = parser.parse_args(argv)
    run_dirs = []
    try:
        for name in args.strategies:
            experiment = load_experiment(
                args.experiment,
                {"strategy.name": name, "name": f"{load_experiment(args.experiment).name}-{name}"},
            )
            deployment = load_deployment(args.config)
            run_dir = create_run_dir(experiment.runs_dir, experiment.name)
            (run_dir / "config.yaml").write_text(
                to_yaml(experiment, {"parsl_config": str(deployment.path)})
            )
            result = run_federation(experiment, deployment, run_dir, progress=lambda line: None)
            seconds = result.rounds[-1].get("seconds") or sum(
                float(row["round_seconds"]) for row in result.rounds
            )
            print(
                f"{name:>10}: final accuracy {result.final_accuracy:.4f} after "
                f"{len(result.rounds)} aggregations, {float(seconds):.1f}s  ({run_dir})"
            )
            run_dirs.append(run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    print(f"figure: {plot_comparison(run_dirs, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
