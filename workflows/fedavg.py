#!/usr/bin/env python3
"""Run federated averaging: python workflows/fedavg.py [--config local.py] [--experiment X.yaml]
[--KEY VALUE ...]. Settings come from the experiment YAML file, overridden by --KEY VALUE
(per-site options as --site_options.LABEL.KEY VALUE)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    print("interrupted while starting; nothing was written", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":  # Ctrl-C while torch and Parsl import: one line, no traceback
    signal.signal(signal.SIGINT, _interrupted_while_starting)

# A process that multiprocessing spawns (Parsl's monitoring) re-imports this file as
# __mp_main__ and needs none of the project: without this guard each would import torch again.
if __name__ != "__mp_main__":
    import psutil  # Parsl depends on it

    from proxyflox.checkpoints import (
        ResumePoint,
        find_resume_point,
        has_checkpoint,
        read_checkpoint,
        truncate_round_logs,
    )
    from proxyflox.controller import (
        Plan,
        RunStoppedError,
        check_run_stores,
        plan_run,
        run_federation,
    )
    from proxyflox.controller.status import LiveStatus
    from proxyflox.errors import ConfigError
    from proxyflox.inventory import INVENTORY_ENV
    from proxyflox.preflight import check_resume_checkpoint
    from proxyflox.results import RunDirInUseError, create_run_dir, lock_run_dir
    from proxyflox.settings import (
        ExperimentConfig,
        add_override_options,
        load_experiment,
        overrides_from_args,
        to_yaml,
    )
    from proxyflox.sites import Deployment, load_deployment
    from proxyflox.stores import StoreUnreachableError

DEFAULT_EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "digits_fedavg.yaml"
EXIT_BAD_INPUT = 2
EXIT_RUN_STOPPED = 3


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--min 5` must not silently mean --min_clients.
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument(
        "--config",
        help="Parsl config: a file path or a name in parsl_configs/ (default: local.py; "
        "with --resume, the run's own)",
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
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a stopped run from its last checkpoint, with its own settings",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    add_override_options(parser)
    return parser


#: How long an interrupted run may take to shut Parsl down before its processes are killed.
SHUTDOWN_GRACE_SECONDS = 15.0


class _Interruption:
    """Ctrl-C, SIGTERM and SIGHUP during a run: unwind through Parsl's shutdown, but never hang.

    The first signal raises KeyboardInterrupt in the main thread, wherever it is, and arms a
    timer: a shutdown still running after ``SHUTDOWN_GRACE_SECONDS`` (or a second signal) kills
    the run's child processes and exits. Checkpoints are written atomically, so a forced exit
    keeps every finished round resumable.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.timer: threading.Timer | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.timer is not None:
            self.force_exit("stopped again")
        self.timer = threading.Timer(
            SHUTDOWN_GRACE_SECONDS,
            self.force_exit,
            [f"shutdown took over {SHUTDOWN_GRACE_SECONDS:.0f} s"],
        )
        self.timer.daemon = True
        self.timer.start()
        raise KeyboardInterrupt(f"signal {signum}")

    def force_exit(self, why: str) -> None:
        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(children, timeout=5)
        print(f"interrupted ({why}; its processes were killed); {_left_behind(self.run_dir)}",
              file=sys.stderr, flush=True)  # fmt: skip
        os._exit(130)


def _left_behind(run_dir: Path) -> str:
    """What an interrupted run leaves: its resumable rounds, or nothing (its directory removed)."""
    if has_checkpoint(run_dir):
        return f"finished rounds are in {run_dir} (continue: --resume {run_dir})"
    shutil.rmtree(run_dir, ignore_errors=True)  # nothing to keep and nothing to resume
    return f"no round finished, so there is nothing to resume ({run_dir} removed)"


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit code (2: bad input, 3: run stopped, 130: interrupted)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # `kill -USR1 <pid>` prints where every thread is: the way to see what a stuck run waits on.
    with contextlib.suppress(ValueError, OSError):  # a stderr without a file (embedded use)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    # A log handler that cannot write (a full disk) must not print a traceback per message:
    # the run's own error says what happened, once.
    logging.raiseExceptions = False
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing was written", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    resume: ResumePoint | None = None
    try:
        overrides = overrides_from_args(args, extra)
        if args.resume:
            if overrides:
                raise ConfigError(
                    f"--resume continues a run with the settings in its config.yaml; "
                    f"drop --{next(iter(overrides))}"
                )
            resume = find_resume_point(args.resume)
            experiment = resume.config
        else:
            experiment = load_experiment(args.experiment, overrides)
        if args.inventory:
            # Config modules take no arguments: pis.py reads its inventory path from here.
            os.environ[INVENTORY_ENV] = str(Path(args.inventory).resolve())
        deployment = load_deployment(args.config or (resume.parsl_config if resume else "local.py"))
        # Fails here, before a run directory exists.
        plan = plan_run(experiment, deployment)
        if resume is not None:
            check_resume_checkpoint(
                experiment,
                read_checkpoint(resume.checkpoint)[0],
                plan.setups[experiment.aggregator].data.data_dir,
                f"resume: {resume.run_dir}",
            )
        check_run_stores(experiment, plan)
    except (ConfigError, StoreUnreachableError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT

    if resume is not None:
        run_dir = resume.run_dir
        try:
            lock = lock_run_dir(run_dir)
        except RunDirInUseError as err:
            print(f"error: resume: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        truncate_round_logs(run_dir, resume.round_number)
        print(f"resuming {run_dir} after round {resume.round_number}", flush=True)
    else:
        # Everything the user typed is valid: only now does the run directory appear.
        try:
            run_dir = create_run_dir(experiment.runs_dir, experiment.name)
        except OSError as err:
            given = Path(experiment.runs_dir)
            exists = given.exists() or given.is_symlink()
            reason = "it is not a directory" if exists and not given.is_dir() else err.strerror
            print(
                f"error: runs_dir: cannot create a run directory in {experiment.runs_dir}: "
                f"{reason}",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        lock = lock_run_dir(run_dir)  # a --resume of it while it runs is refused
        (run_dir / "config.yaml").write_text(
            to_yaml(experiment, {"parsl_config": str(deployment.path)})
        )
        print(f"run directory: {run_dir}", flush=True)
    try:
        return _run(args, experiment, deployment, plan, run_dir, resume)
    finally:
        lock.close()


def _run(
    args: argparse.Namespace,
    experiment: ExperimentConfig,
    deployment: Deployment,
    plan: Plan,
    run_dir: Path,
    resume: ResumePoint | None,
) -> int:
    """Run the experiment in ``run_dir``; every way out is one line and an exit code."""
    # A closing terminal or a dropped ssh session (SIGHUP) stops the run like SIGTERM does.
    interruption = _Interruption(run_dir)
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, interruption)
    start = time.perf_counter()
    # A terminal also sees the running round live; piped output stays one line per round.
    status = LiveStatus(sys.stdout, experiment.rounds) if sys.stdout.isatty() else None
    try:
        with status or contextlib.nullcontext():
            result = run_federation(
                experiment,
                deployment,
                run_dir,
                progress=status.print_line if status else lambda line: print(line, flush=True),
                resume=resume,
                plan=plan,
                observer=status,
            )
    except KeyboardInterrupt:
        print(f"interrupted; {_left_behind(run_dir)}", file=sys.stderr)
        return 130
    except RunStoppedError as err:
        then = (
            f"continue later: --resume {run_dir}"
            if has_checkpoint(run_dir)
            else f"no round finished, so there is nothing to resume (Parsl's logs: {run_dir}/parsl)"
        )
        print(f"error: run stopped: {err}; {then}", file=sys.stderr)
        return EXIT_RUN_STOPPED
    except ConfigError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:
        if args.debug:
            traceback.print_exc()
        if err.errno != errno.ENOSPC:
            hint = "" if args.debug else " (--debug shows the traceback)"
            print(f"error: run failed: {type(err).__name__}: {err}{hint}", file=sys.stderr)
            return 1
        where = err.filename or run_dir
        print(
            f"error: run stopped: no space left on the device holding {where}; free space "
            f"there (or pick another runs_dir or store.directory)"
            + (f", then --resume {run_dir}" if has_checkpoint(run_dir) else ""),
            file=sys.stderr,
        )
        return EXIT_RUN_STOPPED
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
