"""``parsl_configs/polaris.py`` (PBS Pro) and the settings of the HPC config modules.

No PBS server can run here. These tests build the config from its settings and let Parsl's own
PBSProProvider write its submit script and call ``qsub``, which here is a stand-in that records
its arguments and prints a job id, the way PBS answers.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
from parsl.executors import HighThroughputExecutor
from parsl.launchers import MpiExecLauncher, WrappedLauncher
from parsl.providers import LocalProvider, PBSProProvider

from proxyflox.controller.planner import plan_run
from proxyflox.controller.runtime import ParslRuntime
from proxyflox.errors import ConfigError
from proxyflox.hpc import PbsSettings, SlurmSettings, load_settings
from proxyflox.settings import SiteOptions, load_experiment
from proxyflox.sites import Deployment, load_deployment
from tests.helpers import DEFAULT_EXPERIMENT

POLARIS_ENV = {
    "PROXYFLOX_POLARIS_ACCOUNT": "myproj",
    "PROXYFLOX_POLARIS_QUEUE": "prod",
    "PROXYFLOX_POLARIS_NODES": "2",
    "PROXYFLOX_POLARIS_SITES": "2",
    "PROXYFLOX_POLARIS_WALLTIME": "00:30:00",
    "PROXYFLOX_POLARIS_WORKER_INIT": "module load conda; conda activate /eagle/myproj/env",
    "PROXYFLOX_POLARIS_ADDRESS": "10.201.0.1",  # bond0 does not exist here
}


@pytest.fixture
def polaris_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in POLARIS_ENV.items():
        monkeypatch.setenv(name, value)


def site(deployment: Deployment, label: str) -> HighThroughputExecutor:
    (executor,) = [e for e in deployment.parsl_config.executors if e.label == label]
    assert isinstance(executor, HighThroughputExecutor)
    return executor


def test_polaris_config_is_built_from_its_settings(polaris_env: None) -> None:
    deployment = load_deployment("polaris.py")
    labels = [e.label for e in deployment.parsl_config.executors]
    assert labels == ["site-0", "site-1", "aggregator"]
    executor = site(deployment, "site-1")
    assert executor.address == "10.201.0.1"
    assert executor.available_accelerators == ["0", "1", "2", "3"]
    assert executor.launch_cmd.startswith(
        f"{sys.executable} -m parsl.executors.high_throughput.process_worker_pool "
    )
    provider = executor.provider
    assert isinstance(provider, PBSProProvider)
    assert (provider.account, provider.queue) == ("myproj", "prod")
    assert (provider.nodes_per_block, provider.walltime) == (2, "00:30:00")
    assert (provider.min_blocks, provider.max_blocks) == (1, 1)
    assert isinstance(provider.launcher, MpiExecLauncher)
    # Sites use their GPU; the aggregator keeps the experiment's defaults.
    assert deployment.site_options["site-0"] == SiteOptions(device="cuda")
    assert "aggregator" not in deployment.site_options


def test_polaris_submit_script_has_select_walltime_and_launcher(
    polaris_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qsub_args = tmp_path / "qsub.args"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    qsub = fake_bin / "qsub"
    qsub.write_text(f'#!/bin/sh\necho "$@" > {qsub_args}\necho 4242.polaris-pbs-01\n')
    qsub.chmod(qsub.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake_bin}:/usr/bin:/bin")

    executor = site(load_deployment("polaris.py"), "site-0")
    # What start() sets up (without an interchange) before it fills in the worker-pool command.
    # (start() sets None where there is no log config; mypy infers str from its other branch.)
    executor.logconf_path = None  # type: ignore[assignment]
    executor.worker_port = 54321
    executor.initialize_scaling()
    provider = executor.provider
    assert isinstance(provider, PBSProProvider)
    provider.script_dir = str(tmp_path)
    job_id = provider.submit(executor._get_launch_command("0"), 1, "parsl.site-0.block-0")
    assert job_id == "4242.polaris-pbs-01"

    (script_path,) = [p for p in tmp_path.glob("parsl.site-0.block-0.*")]
    script = script_path.read_text()
    assert "#PBS -l select=2:ncpus=64:ngpus=4\n" in script
    assert "#PBS -l walltime=00:30:00\n" in script
    assert "#PBS -l filesystems=home:eagle\n" in script
    assert "module load conda; conda activate /eagle/myproj/env\n" in script
    # One worker pool per node, over the job's deduplicated node file.
    assert "WORKERCOUNT=2\n" in script
    assert "sort -u $PBS_NODEFILE > $HOSTFILE" in script
    assert (
        "mpiexec --cpu-bind none --depth=64 --ppn 1 -n $WORKERCOUNT --hostfile $HOSTFILE" in script
    )
    assert "-m parsl.executors.high_throughput.process_worker_pool" in script
    assert "--available-accelerators 0 1 2 3" in script
    assert "-a 10.201.0.1 " in script
    assert "--port=54321 " in script
    assert qsub_args.read_text().split() == ["-q", "prod", "-A", "myproj", str(script_path)]


def test_polaris_inside_an_allocation_runs_one_site_per_node_after_the_first(
    polaris_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodefile = tmp_path / "nodefile"
    # PBS lists a node once per rank.
    nodefile.write_text("x3001c0s1b0n0\nx3001c0s1b0n0\nx3001c0s7b1n0\nx3002c0s1b0n0\n")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    monkeypatch.setenv("PROXYFLOX_POLARIS_MODE", "allocation")
    deployment = load_deployment("polaris.py")
    labels = [e.label for e in deployment.parsl_config.executors]
    assert labels == ["site-0", "site-1", "aggregator"]
    for label, node in [("site-0", "x3001c0s7b1n0"), ("site-1", "x3002c0s1b0n0")]:
        provider = site(deployment, label).provider
        assert isinstance(provider, LocalProvider)
        assert isinstance(provider.launcher, WrappedLauncher)
        assert provider.launcher.prepend.startswith(f"mpiexec -n 1 --ppn 1 --hosts {node} ")


def test_allocation_mode_outside_a_job_is_a_config_error(
    polaris_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PBS_NODEFILE", raising=False)
    monkeypatch.setenv("PROXYFLOX_POLARIS_MODE", "allocation")
    with pytest.raises(ConfigError, match="not inside a PBS job"):
        load_deployment("polaris.py")


@pytest.mark.parametrize("name", ["polaris", "slurm"])
def test_hpc_configs_are_encrypted_unless_set_off_and_then_warn(
    name: str,
    polaris_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PROXYFLOX_SLURM_ADDRESS", "10.201.0.1")
    executors = load_deployment(f"{name}.py").parsl_config.executors
    # The aggregator's too: a login node is shared with other users.
    assert [getattr(e, "encrypted", None) for e in executors] == [True] * len(executors)
    assert capsys.readouterr().err == ""

    monkeypatch.setenv(f"PROXYFLOX_{name.upper()}_ENCRYPTED", "false")
    executors = load_deployment(f"{name}.py").parsl_config.executors
    assert [getattr(e, "encrypted", None) for e in executors] == [False] * len(executors)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {name}.py: setting encrypted is false: ")
    assert "can register as a worker, receive tasks and send back pickles" in line


def test_workers_are_told_absolute_paths_of_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch job starts elsewhere (PBS: in the user's home), so a relative runs_dir must not
    # reach the workers' --cert_dir and --logdir as it is.
    monkeypatch.chdir(tmp_path)
    deployment = load_deployment("local.py")
    plan = plan_run(load_experiment(DEFAULT_EXPERIMENT), deployment)
    runtime = ParslRuntime(deployment.parsl_config, plan, Path("runs/x"), None, 0)
    assert runtime.config.run_dir == str(tmp_path / "runs" / "x" / "parsl")


def test_settings_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "slurm.yaml"
    path.write_text(
        "partition: gpu\nnodes: 4\nexclusive: false\nworker_init: module load x\n"
        "walltime: 2:30:00\n"  # YAML 1.1 reads this as an integer (base 60)
    )
    settings = load_settings(
        SlurmSettings,
        "slurm",
        {"PROXYFLOX_SLURM": str(path), "PROXYFLOX_SLURM_NODES": "8", "OTHER": "x"},
    )
    assert settings == SlurmSettings(
        partition="gpu", nodes=8, exclusive=False, worker_init="module load x", walltime="02:30:00"
    )
    assert load_settings(PbsSettings, "polaris", {}) == PbsSettings()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PROXYFLOX_SLURM_NODE": "2"}, "PROXYFLOX_SLURM_NODE: not a setting (did you mean "),
        ({"PROXYFLOX_SLURM_NODES": "0"}, "PROXYFLOX_SLURM_NODES: must be at least 1, got 0"),
        ({"PROXYFLOX_SLURM_NODES": "two"}, "PROXYFLOX_SLURM_NODES: must be an integer"),
        ({"PROXYFLOX_SLURM_WALLTIME": "2h"}, "PROXYFLOX_SLURM_WALLTIME: must be HH:MM:SS"),
        ({"PROXYFLOX_SLURM_EXCLUSIVE": "maybe"}, "must be true or false, got 'maybe'"),
        ({"PROXYFLOX_SLURM_MODE": "alloc"}, "unknown value 'alloc' (did you mean 'allocation'?)"),
        ({"PROXYFLOX_SLURM_PYTHON": "python3"}, "PROXYFLOX_SLURM_PYTHON: must be an absolute"),
        ({"PROXYFLOX_SLURM_DEVICE": "gpu"}, "PROXYFLOX_SLURM_DEVICE: unknown value 'gpu'"),
        ({"PROXYFLOX_SLURM": "/nonexistent/slurm.yaml"}, "settings file /nonexistent/slurm.yaml"),
    ],
)
def test_bad_settings_are_one_line_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(SlurmSettings, "slurm", environ)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_settings_file_keys_and_yaml(tmp_path: Path) -> None:
    path = tmp_path / "polaris.yaml"
    path.write_text("acount: myproj\n")
    with pytest.raises(ConfigError, match=r"unknown key 'acount' \(did you mean 'account'\?\)"):
        load_settings(PbsSettings, "polaris", {"PROXYFLOX_POLARIS": str(path)})
    path.write_text("account: [myproj\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line 2"):
        load_settings(PbsSettings, "polaris", {"PROXYFLOX_POLARIS": str(path)})


def test_a_missing_interface_names_the_settings_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXYFLOX_POLARIS_INTERFACE", "nosuchif0")
    with pytest.raises(ConfigError, match="no network interface 'nosuchif0'"):
        load_deployment("polaris.py")
