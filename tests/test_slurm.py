"""``parsl_configs/slurm.py`` and ``scripts/fedavg.sbatch`` on a real one-node Slurm cluster
(slurmctld + slurmd + munged, started for these tests and stopped after them).

Needs root and Debian's ``slurm-wlm`` and ``munge``; without them these tests fail saying what is
missing.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CLI, ROOT, bare_env, only_run_dir
from tests.infra.common import processes_mentioning, run_workflow, wait_for
from tests.infra.slurm import SlurmCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    with SlurmCluster() as cluster:
        yield cluster


def slurm_env(cluster: SlurmCluster, **settings: str) -> dict[str, str]:
    """A user's environment (no venv on PATH) pointing at the cluster, with slurm.py settings."""
    env = bare_env() | {"SLURM_CONF": str(cluster.conf)}
    # Compute node and controller are this machine.
    env["PROXYFLOX_SLURM_ADDRESS"] = "127.0.0.1"
    env |= {f"PROXYFLOX_SLURM_{key.upper()}": value for key, value in settings.items()}
    return env


def site_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "sites.csv", newline="") as file:
        return list(csv.DictReader(file))


def assert_jobs_gone(cluster: SlurmCluster, job_ids: set[str], run_dir: Path) -> None:
    wait_for("the jobs to leave the queue", lambda: not cluster.queue(), timeout=60)
    for job_id in job_ids:
        assert cluster.job_state(job_id)["JobState"] in ("CANCELLED", "COMPLETED")
    wait_for(
        "the run's worker pools to exit",
        lambda: not processes_mentioning(str(run_dir)),
        timeout=30,
    )


def test_slurm_config_trains_in_batch_jobs_parsl_submits(
    tmp_path: Path, cluster: SlurmCluster
) -> None:
    env = slurm_env(cluster, sites="2", partition="debug", walltime="00:10:00", exclusive="false")
    start = time.perf_counter()
    runs = tmp_path / "runs"
    # A relative runs_dir: what the workers are told must be valid wherever a job starts.
    command = ["--config", "slurm.py", "--rounds", "1", "--sites", "2", "--runs_dir", "runs"]
    done = run_workflow([sys.executable, str(CLI), *command], cwd=tmp_path, env=env, timeout=300)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr + cluster.logs()
    assert "round   1/1  accuracy" in done.stdout
    run_dir = only_run_dir(runs)

    # Each site trained inside its own executor's Slurm job.
    rows = site_rows(run_dir)
    assert [r["executor"] for r in rows] == ["site-0", "site-1"]
    job_ids = {r["batch_job"] for r in rows}
    assert len(job_ids) == 2, rows
    assert all(job_ids), rows
    for job_id in job_ids:
        state = cluster.job_state(job_id)
        assert state["Partition"] == "debug"
        assert state["TimeLimit"] == "00:10:00"
    # What Parsl handed to sbatch: the settings, and the worker pool started through srun.
    (script_path,) = [
        path
        for path in (run_dir / "parsl").glob("*/submit_scripts/parsl.site-0.block-0.*")
        if path.suffix not in (".stdout", ".stderr")
    ]
    script = script_path.read_text()
    assert "#SBATCH --partition=debug" in script
    assert "srun --ntasks 1 -l" in script
    assert "-m parsl.executors.high_throughput.process_worker_pool" in script
    # Encrypted by default: the workers read the certificates from the run directory, by its
    # absolute path, on the filesystem they share with the controller.
    certificates = run_dir.resolve() / "parsl" / "000" / "site-0" / "certificates"
    assert f" --cert_dir {certificates} " in script
    assert (certificates / "client.key_secret").is_file()

    assert_jobs_gone(cluster, job_ids, run_dir)
    print(f"\n1 round with 2 sites in 2 Slurm jobs: {seconds:.1f}s")


def test_sbatch_script_runs_the_whole_workflow_inside_one_allocation(
    tmp_path: Path, cluster: SlurmCluster
) -> None:
    output = tmp_path / "job.out"
    runs = tmp_path / "runs"
    start = time.perf_counter()
    # One node here: the script's --nodes is overridden, controller and site share it.
    options = ["--parsable", "--nodes=1", f"--output={output}", "--time=00:10:00"]
    arguments = ["--rounds", "1", "--sites", "2", "--runs_dir", str(runs)]
    submitted = subprocess.run(
        ["sbatch", *options, "scripts/fedavg.sbatch", *arguments],
        cwd=ROOT,
        env=slurm_env(cluster) | {"PROXYFLOX_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    wait_for(f"job {job_id} to finish", lambda: job_id not in cluster.queue(), timeout=300)
    seconds = time.perf_counter() - start
    log = output.read_text()
    state = cluster.job_state(job_id)
    assert state["JobState"] == "COMPLETED", log + cluster.logs()
    assert "done: 1 rounds" in log
    run_dir = only_run_dir(runs)
    rows = site_rows(run_dir)
    # Both sites ran on the allocation's site executor, inside this very job.
    assert {r["executor"] for r in rows} == {"site-0"}
    assert {r["batch_job"] for r in rows} == {job_id}
    (script,) = (run_dir / "parsl").glob("*/submit_scripts/parsl.site-0.block-0.*.sh")
    node = cluster.node
    assert f"srun --nodes=1 --ntasks=1 --nodelist={node} --overlap" in script.read_text()
    assert_jobs_gone(cluster, {job_id}, run_dir)
    print(f"\nscripts/fedavg.sbatch, 1 round: {seconds:.1f}s from sbatch to the job's end")
