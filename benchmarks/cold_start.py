"""Cold start: process start to the end of round 1 of the default experiment, and where it goes.

    python -m benchmarks.cold_start [--config parsl_configs/local_htex.py] [--reps 3]

Each repetition runs ``workflows/fedavg.py --rounds 1`` as a fresh process and reads its output
line by line: the wall time to the line of round 1 is the cold start. While it runs, the CPU
time of every process in its tree is sampled (every 0.1 s, so processes that exit are counted
too) and summed by kind: the controller, the interchanges, the worker-pool managers and the
workers. The phases come from the run's Parsl log: the DataFlowKernel's start, the last
interchange up, and the last priming app done. On a machine with ``c`` cores the process tree's
CPU time divided by ``c`` is a floor for the cold start, whatever the order of the work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("controller", "interchange", "pool manager", "worker")


def kind_of(process: psutil.Process, controller: int) -> str:
    """Which part of the run a process is, from its command line."""
    if process.pid == controller:
        return "controller"
    command = " ".join(process.cmdline())
    if "interchange" in command:
        return "interchange"
    if "process_worker_pool" in command:
        return "pool manager"
    return "worker"


def run_processes(controller: int, output: str) -> list[psutil.Process]:
    """The controller, its children, and the worker pools (a provider starts them detached,
    so they are found by the run directory on their command line) with their workers."""
    found: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        found = [psutil.Process(controller), *psutil.Process(controller).children(recursive=True)]
    named = re.search(r"run directory: (\S+)", output)
    if named is None:
        return found
    for process in psutil.process_iter(["cmdline"]):
        if named.group(1) in " ".join(process.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                found += [process, *process.children(recursive=True)]
    return list({process.pid: process for process in found}.values())


def parsl_phases(run_dir: Path, started: float) -> dict[str, float]:
    """Seconds from process start to the DFK's start, the last interchange, the last priming."""
    stamps: dict[str, float] = {}
    log = next(run_dir.glob("parsl/*/parsl.log"), None)
    if log is None:
        return stamps
    primes: set[str] = set()
    for line in log.read_text().splitlines():
        try:  # a record's first line starts with its time; a logged config spans several
            stamp = float(line.split(" ", 1)[0])
        except ValueError:
            continue
        if "Starting DataFlowKernel" in line:
            stamps.setdefault("parsl loaded", stamp - started)
        elif "Interchange process started" in line:
            stamps["interchanges up"] = stamp - started
        elif match := re.search(r"Task (\d+) submitted for App prime_worker", line):
            primes.add(match.group(1))
        elif (
            match := re.search(r"Task (\d+) changing state from launched to exec_done", line)
        ) and (match.group(1) in primes):
            stamps["workers primed"] = stamp - started
    return stamps


def one_run(config: str, runs_dir: Path) -> dict[str, float]:
    """One cold start: seconds to the end of round 1, phases, CPU seconds by process kind."""
    started = time.time()
    child = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "workflows/fedavg.py",
            "--config",
            config,
            "--rounds",
            "1",
            "--runs_dir",
            str(runs_dir),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert child.stdout is not None
    os.set_blocking(child.stdout.fileno(), False)
    cpu: dict[int, tuple[str, float]] = {}
    figures: dict[str, float] = {}
    output = ""
    while child.poll() is None or not figures.get("round 1 done"):
        tree = run_processes(child.pid, output)
        for process in tree:
            try:
                times = process.cpu_times()
                cpu[process.pid] = (kind_of(process, child.pid), times.user + times.system)
            except psutil.NoSuchProcess:
                pass
        with contextlib.suppress(BlockingIOError):  # the pipe does not block
            output += os.read(child.stdout.fileno(), 1 << 16).decode(errors="replace")
        if "round   1/1" in output and "round 1 done" not in figures:
            figures["round 1 done"] = time.time() - started
            for kind in KINDS:
                figures[f"cpu {kind}"] = sum(s for k, s in cpu.values() if k == kind)
        if child.poll() is not None and "round 1 done" not in figures:
            raise SystemExit(f"the run failed:\n{output[-2000:]}")
        time.sleep(0.1)
    child.wait()
    run_dir = Path(re.search(r"run directory: (\S+)", output).group(1))  # type: ignore[union-attr]
    return figures | parsl_phases(run_dir, started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="parsl_configs/local_htex.py")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    runs = []
    with tempfile.TemporaryDirectory(prefix="proxyflox-cold-") as tmp:
        for rep in range(args.reps):
            runs.append(one_run(args.config, Path(tmp)))
            print(
                f"rep {rep + 1}: {runs[-1]['round 1 done']:.1f} s to the end of round 1, "
                f"load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    print(
        f"\n{datetime.now():%Y-%m-%d %H:%M}, {cores} cores, {args.config}, median of {len(runs)}:"
    )
    names = ["parsl loaded", "interchanges up", "workers primed", "round 1 done"]
    for name in names + [f"cpu {kind}" for kind in KINDS]:
        values = [run[name] for run in runs if name in run]
        if values:
            print(f"  {name:<18} {statistics.median(values):6.1f} s")
    total = statistics.median(sum(run[f"cpu {kind}"] for kind in KINDS) for run in runs)
    print(
        f"  {'cpu, whole tree':<18} {total:6.1f} s  -> floor on {cores} cores {total / cores:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
