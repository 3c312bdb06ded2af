"""The controller: the process that runs the round loop and only ever handles references.

:func:`run_federation` plans the run, opens its store, ledger, records and Parsl, and runs the
synchronous rounds (``rounds.py``) or the asynchronous loop (``asynchronous.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from proxyflox.checkpoints import ResumePoint
from proxyflox.controller.asynchronous import run_asynchronous
from proxyflox.controller.context import RunResult, open_run
from proxyflox.controller.observer import ObserverList, ProgressLines, RunObserver
from proxyflox.controller.planner import Plan, plan_run
from proxyflox.controller.rounds import run_rounds
from proxyflox.controller.runtime import AppBodies
from proxyflox.controller.store import check_run_stores, lost_store
from proxyflox.errors import ConfigError, RunStoppedError, require_extra
from proxyflox.settings import ExperimentConfig
from proxyflox.sites import Deployment

__all__ = [
    "AppBodies",
    "Plan",
    "RunObserver",
    "RunResult",
    "RunStoppedError",
    "check_run_stores",
    "plan_run",
    "run_federation",
]


def run_federation(
    config: ExperimentConfig,
    deployment: Deployment,
    run_dir: Path,
    *,
    progress: Callable[[str], None] = print,
    resume: ResumePoint | None = None,
    plan: Plan | None = None,
    observer: RunObserver | None = None,
    bodies: AppBodies | None = None,
) -> RunResult:
    """Run the experiment on the executors of a deployment; results go to ``run_dir``.

    Parsl is shut down on every way out (errors and Ctrl-C included), and every object the run
    put into the store is evicted.

    Args:
        config: The experiment.
        deployment: Where the apps run.
        run_dir: The run's directory (created by the caller).
        progress: Called with one line per round.
        resume: Continue a stopped run from its last checkpoint.
        plan: The run's plan, if the caller already made it (:func:`plan_run`).
        observer: Watches the run's events (besides the progress lines).
        bodies: Replacement app bodies (timed ones, for measurements).

    Raises:
        ConfigError: if the experiment does not fit the deployment.
        RunStoppedError: when a round ends with fewer than ``min_clients`` updates, or when an
            app fails while one of the run's stores is gone.
    """
    plan = plan or plan_run(config, deployment)
    strategy = plan.strategy(config)
    watchers = ObserverList(
        [ProgressLines(progress, config.rounds), *([observer] if observer else [])]
    )
    result = RunResult(run_dir)
    try:
        with ExitStack() as stack:
            run = open_run(
                stack,
                config,
                deployment,
                plan,
                run_dir,
                watchers,
                progress,
                asynchronous=strategy.asynchronous,
                report_columns=strategy.report_columns,
                bodies=bodies,
            )
            rows = (
                run_asynchronous(run, strategy)
                if strategy.asynchronous
                else run_rounds(run, strategy, resume)
            )
            result.rounds.extend(rows)
    except (RunStoppedError, ConfigError):
        raise
    except Exception as err:
        # An aggregate or evaluation that failed because its store went away is a stop.
        stopped = lost_store(config, plan, err)
        if stopped is None:
            raise
        raise stopped from err
    _write_plots(run_dir, progress)
    return result


def _write_plots(run_dir: Path, progress: Callable[[str], None]) -> None:
    """The run's PNG plots; a plotting failure only warns, the CSV files are the results."""
    try:
        with require_extra("matplotlib", "plot", "plotting"):
            from proxyflox.plot import plot_run  # matplotlib loads once a run has finished
        plot_run(run_dir)
    except Exception as err:
        progress(f"warning: plots not written: {type(err).__name__}: {err}")
