"""Many clients per round, beside Flower's simulation engine: 100 and 1,000 sampled clients of
the default model (digits CNN, iid) on one machine.

    python -m benchmarks.clients [--clients 100 1000] [--rounds 4] [--flower-venv DIR]

(from the project root). ProxyFlox runs on parsl_configs/local_htex.py: its 4 site executors
(one worker each) take the sites in turn (site i on executor i mod 4). Flower runs the same
workload in its own venv (made here on first use: ``flwr[simulation]`` and torch), one client
per core. Each run is a child process; this process samples the resident memory of the child's
whole process tree (Parsl's interchanges and workers, Ray's daemons and actors: every process
that inherited the run's tag in its environment).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import median, print_machine, project_root_on_pythonpath, write_csv

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FLOWER_REQUIREMENTS = ["flwr[simulation]", "torch==2.14.1", "scikit-learn", "psutil"]
#: How often the process tree's memory is sampled.
SAMPLE_SECONDS = 0.2
#: Environment variable that marks every process of one measured run.
TAG_VARIABLE = "BENCH_CLIENTS_RUN"


def ensure_flower_venv(venv: Path) -> Path:
    """Flower's own interpreter, creating its venv on first use."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import flwr.simulation, torch, sklearn, psutil"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing Flower into {venv} (a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *FLOWER_REQUIREMENTS], check=True)
    return python


class TreeMemory:
    """Peak of the summed RSS of one system's processes, sampled in a thread.

    Its processes are those that carry ``tag`` in their environment: the child and everything
    it started, including processes re-parented to init when the shell that started them
    exited (Parsl's ``LocalProvider`` starts worker pools that way), which a walk of the
    child's descendants would miss.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.peak = 0
        self._checked: dict[int, psutil.Process | None] = {}  # pid -> tagged process or None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tagged(self, process: psutil.Process) -> psutil.Process | None:
        if process.pid not in self._checked:  # an environment is read once per process
            try:
                tagged = process.environ().get(TAG_VARIABLE) == self.tag
            except psutil.Error:
                tagged = False
            self._checked[process.pid] = process if tagged else None
        return self._checked[process.pid]

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            for process in psutil.process_iter():
                tagged = self._tagged(process)
                if tagged is not None:
                    with contextlib.suppress(psutil.Error):  # ended between listing and reading
                        total += tagged.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(SAMPLE_SECONDS)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak


def run_child(command: list[str], out: Path) -> tuple[dict[str, Any], int, float]:
    """Run one system's child; its JSON record, peak tree RSS and wall seconds."""
    start = time.perf_counter()
    tag = uuid.uuid4().hex
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{TAG_VARIABLE: tag})
    with open(out.with_suffix(".log"), "w") as log:
        memory = TreeMemory(tag)
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        code = child.wait()
        peak = memory.stop()
    if code != 0:
        raise RuntimeError(f"{command[:4]} failed ({code}); see {out.with_suffix('.log')}")
    return json.loads(out.read_text()), peak, time.perf_counter() - start


def proxyflox_child(clients: int, rounds: int, out: Path) -> int:
    """ProxyFlox's side (a child process): the project's run with timed apps."""
    from benchmarks.common import run_timed
    from proxyflox.settings import load_experiment
    from proxyflox.sites import load_deployment

    config = load_experiment(
        ROOT / "experiments" / "digits_fedavg.yaml",
        {"sites": str(clients), "clients_per_round": str(clients), "rounds": str(rounds)},
    )
    run_dir = Path(tempfile.mkdtemp(prefix="bench-clients-")) / "run"
    run_dir.mkdir()
    start = time.perf_counter()
    try:
        records, _, _ = run_timed(config, load_deployment("local_htex.py"), run_dir, print)
    finally:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    record = {
        "process_seconds": time.perf_counter() - start,
        "round_seconds": [float(r.row["round_seconds"]) for r in records],
        "controller_cpu_seconds": [r.controller_cpu_seconds for r in records[1:]],
        "accuracy": float(records[-1].row["accuracy"]),
    }
    out.write_text(json.dumps(record))
    return 0


def summary(system: str, clients: int, record: dict[str, Any], peak: int, wall: float) -> dict:
    """One row of ``bench_clients.csv``: medians over rounds 2 and later."""
    steady = record["round_seconds"][1:]
    cpu = [c for c in record["controller_cpu_seconds"] if not math.isnan(c)]
    return {
        "system": system,
        "clients_per_round": clients,
        "rounds": len(record["round_seconds"]),
        "round1_seconds": record["round_seconds"][0],
        "median_round_seconds": median(steady),
        "median_controller_cpu_seconds": median(cpu),
        "peak_tree_rss_mb": peak / 1e6,
        "child_wall_seconds": wall,
        "accuracy": record["accuracy"],
    }


def main() -> int:
    """Run both systems for every clients-per-round setting, interleaved; print and write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--flower-venv", type=Path, default=Path.home() / ".cache" / "proxyflox" / "flower-venv"
    )
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--proxyflox-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxyflox_child is not None:
        return proxyflox_child(args.proxyflox_child, args.rounds, args.child_out)

    project_root_on_pythonpath()
    machine = print_machine()
    flower_python = ensure_flower_venv(args.flower_venv)
    rows: list[dict[str, Any]] = []
    scratch = Path(tempfile.mkdtemp(prefix="bench-clients-"))
    try:
        for clients in args.clients:
            commands = {
                "proxyflox": [sys.executable, "-m", "benchmarks.clients",
                              "--proxyflox-child", str(clients), "--rounds", str(args.rounds)],
                "flower": [str(flower_python), "-m", "benchmarks.flower_digits",
                           "--clients", str(clients), "--rounds", str(args.rounds)],
            }  # fmt: skip
            for system, command in commands.items():
                out = scratch / f"{system}-{clients}.json"
                flag = "--child-out" if system == "proxyflox" else "--out"
                print(f"{system}: {clients} clients per round ...", flush=True)
                record, peak, wall = run_child([*command, flag, str(out)], out)
                rows.append(summary(system, clients, record, peak, wall) | machine)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\n{'system':>10}{'clients':>9}{'round s':>9}{'ctrl CPU s':>12}{'tree RSS MB':>13}")
    for row in rows:
        print(
            f"{row['system']:>10}{row['clients_per_round']:>9}{row['median_round_seconds']:>9.2f}"
            f"{row['median_controller_cpu_seconds']:>12.2f}{row['peak_tree_rss_mb']:>13.0f}"
        )
    for clients in args.clients:
        ours, theirs = (
            next(r for r in rows if r["system"] == s and r["clients_per_round"] == clients)
            for s in ("proxyflox", "flower")
        )
        ratio = ours["median_round_seconds"] / theirs["median_round_seconds"]
        print(f"  {clients} clients: ProxyFlox round time {ratio:.2f}x Flower's")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(args.out / "bench_clients.csv", rows)
    print(f"\nwrote {args.out / 'bench_clients.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
