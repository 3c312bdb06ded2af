#!/usr/bin/env python3
"""Run federated averaging: python workflows/fedavg.py [--config local.py] [--experiment X.yaml]
[--KEY VALUE ...]. Settings come from the experiment YAML file, overridden by --KEY VALUE
(per-site options as --site_options.LABEL.KEY VALUE)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

from proxyflox.config import (
    ConfigError,
    add_override_options,
    load_experiment,
    overrides_from_args,
    to_yaml,
)
from proxyflox.inventory import INVENTORY_ENV
from proxyflox.results import create_run_dir
from proxyflox.rounds import run_federation
from proxyflox.sites import load_deployment
from proxyflox.stores import StoreUnreachableError, check_store

DEFAULT_EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "digits_fedavg.yaml"
EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--config",
        default="local.py",
        help="Parsl config: a file path or a name in parsl_configs/ (default: local.py)",
    )
    parser.add_argument(
        "--experiment",
        default=str(DEFAULT_EXPERIMENT),
        help="experiment YAML file (default: experiments/digits_fedavg.yaml)",
    )
    parser.add_argument(
        "--inventory",
        metavar="FILE",
        help=f"Pi inventory YAML for --config pis.py (sets {INVENTORY_ENV})",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    add_override_options(parser)
    return parser


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through Parsl's shutdown


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    try:
        experiment = load_experiment(args.experiment, overrides_from_args(args, extra))
        if args.inventory:
            # Config modules take no arguments: pis.py reads its inventory path from here.
            os.environ[INVENTORY_ENV] = str(Path(args.inventory).resolve())
        deployment = load_deployment(args.config)
        deployment.options_for(experiment)  # fails here, before a run directory exists
        if experiment.transfer == "proxy":
            check_store(experiment.store)
    except (ConfigError, StoreUnreachableError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    # Everything the user typed is valid: only now does the run directory appear.
    run_dir = create_run_dir(experiment.runs_dir, experiment.name)
    (run_dir / "config.yaml").write_text(
        to_yaml(experiment, {"parsl_config": str(deployment.path)})
    )
    print(f"run directory: {run_dir}", flush=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    start = time.perf_counter()
    try:
        result = run_federation(
            experiment, deployment, run_dir, progress=lambda line: print(line, flush=True)
        )
    except KeyboardInterrupt:
        print(f"interrupted; finished rounds are in {run_dir}", file=sys.stderr)
        return 130
    except ConfigError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (--debug shows the traceback)"
        print(f"error: run failed: {type(err).__name__}: {err}{hint}", file=sys.stderr)
        return 1
    print(
        f"done: {len(result.rounds)} rounds in {time.perf_counter() - start:.1f}s, "
        f"final accuracy {result.final_accuracy:.4f}; results in {run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
