"""The Pi inventory file and ``parsl_configs/pis.py`` built from it (no ssh needed here; the
real runs over ssh are in ``test_pis.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SingleNodeLauncher, WrappedLauncher
from parsl.providers import LocalProvider

from proxyflox.errors import ConfigError
from proxyflox.inventory import INVENTORY_ENV, load_inventory, ssh_command
from proxyflox.pi_launcher import PiLauncher
from proxyflox.settings import SiteOptions
from proxyflox.sites import load_deployment
from tests.helpers import ROOT, run_cli


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A key and a known_hosts file, which the inventory requires to exist."""
    key, known = tmp_path / "id_ed25519", tmp_path / "known_hosts"
    key.write_text("not read by these tests\n")
    known.write_text("")
    return {"identity_file": str(key), "known_hosts": str(known)}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "pis.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def two_pis(files: dict[str, str]) -> dict[str, object]:
    return {
        "controller_address": "198.18.0.1",
        "defaults": {
            "user": "pi",
            "python": "/home/pi/venv/bin/python",
            **files,
            "site_options": {"torch_threads": 4, "device": "cpu"},
        },
        "pis": {
            "pi-1": {"host": "198.18.0.2", "site_options": {"batch_size": 1}},
            "pi-2": {"host": "pi2.local", "port": 2222, "user": "alice", "workers": 2},
        },
    }


def test_defaults_apply_to_every_pi_and_each_pi_overrides(
    tmp_path: Path, files: dict[str, str]
) -> None:
    inventory = load_inventory(write(tmp_path, two_pis(files)))
    pi1, pi2 = inventory.pis
    assert (pi1.name, pi1.user, pi1.port, pi1.workers) == ("pi-1", "pi", None, 1)
    assert (pi2.name, pi2.user, pi2.port, pi2.workers) == ("pi-2", "alice", 2222, 2)
    assert pi1.site_options == SiteOptions(batch_size=1, torch_threads=4, device="cpu")
    assert pi2.site_options == SiteOptions(torch_threads=4, device="cpu")
    assert inventory.site_options()["pi-1"] == {
        "batch_size": 1,
        "torch_threads": 4,
        "device": "cpu",
    }


def test_ssh_command_checks_host_keys_and_uses_the_inventory(
    tmp_path: Path, files: dict[str, str]
) -> None:
    _, pi2 = load_inventory(write(tmp_path, two_pis(files))).pis
    command = ssh_command(pi2)
    assert command[:2] == ["ssh", "-tt"]
    assert command[-1] == "pi2.local"
    text = " ".join(command)
    assert "-o BatchMode=yes -o StrictHostKeyChecking=yes" in text
    assert f"-o UserKnownHostsFile={files['known_hosts']}" in text
    assert f"-i {files['identity_file']} -o IdentitiesOnly=yes" in text
    assert "-p 2222 -l alice" in text


def test_pis_config_module_builds_one_executor_per_pi(
    tmp_path: Path, files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INVENTORY_ENV, str(write(tmp_path, two_pis(files))))
    deployment = load_deployment("pis.py")
    executors = deployment.parsl_config.executors
    assert [e.label for e in executors] == ["pi-1", "pi-2", "aggregator"]
    pi1 = executors[0]
    assert isinstance(pi1, HighThroughputExecutor)
    assert pi1.address == "198.18.0.1"
    assert pi1.launch_cmd.startswith(
        "/home/pi/venv/bin/python -m parsl.executors.high_throughput.process_worker_pool "
    )
    assert pi1.worker_logdir_root == "proxyflox-logs"
    assert isinstance(pi1.provider, LocalProvider)
    launcher = pi1.provider.launcher
    assert isinstance(launcher, WrappedLauncher)
    assert launcher.prepend.startswith("echo 'pi-1: starting the worker pool on pi@198.18.0.2")
    assert "; ssh -tt -o BatchMode=yes" in launcher.prepend
    assert deployment.site_options["pi-1"] == SiteOptions(
        batch_size=1, torch_threads=4, device="cpu"
    )
    assert deployment.site_options["pi-2"] == SiteOptions(torch_threads=4, device="cpu")
    pi2 = executors[1]
    assert isinstance(pi2, HighThroughputExecutor)
    assert pi2.max_workers_per_node == 2


def test_an_aggregator_section_starts_the_aggregator_over_ssh_too(
    tmp_path: Path, files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = two_pis(files) | {"aggregator": {"host": "198.18.0.9", "user": "agg"}}
    monkeypatch.setenv(INVENTORY_ENV, str(write(tmp_path, data)))
    deployment = load_deployment("pis.py")
    aggregator = deployment.parsl_config.executors[-1]
    assert isinstance(aggregator, HighThroughputExecutor)
    assert aggregator.label == "aggregator"
    assert aggregator.address == "198.18.0.1"  # its pool connects back to the controller
    assert isinstance(aggregator.provider, LocalProvider)
    launcher = aggregator.provider.launcher
    assert isinstance(launcher, WrappedLauncher)
    assert "on agg@198.18.0.9 over ssh" in launcher.prepend
    assert launcher.prepend.endswith(" 198.18.0.9")
    assert "aggregator" not in deployment.site_options  # it trains no site


def test_pis_are_encrypted_unless_the_inventory_says_not_and_then_it_warns(
    tmp_path: Path,
    files: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(INVENTORY_ENV, str(write(tmp_path, two_pis(files))))
    executors = load_deployment("pis.py").parsl_config.executors
    # Every executor, the aggregator's on this machine too (others may log into it).
    assert all(isinstance(e, HighThroughputExecutor) for e in executors)
    htex = [e for e in executors if isinstance(e, HighThroughputExecutor)]
    assert [e.encrypted for e in htex] == [True, True, True]
    launchers = [type(getattr(e.provider, "launcher", None)) for e in htex]
    assert launchers == [PiLauncher, PiLauncher, SingleNodeLauncher]
    assert capsys.readouterr().err == ""

    path = write(tmp_path, two_pis(files) | {"encrypted": False})
    for _ in range(2):  # said once, however often the module is imported
        executors = load_deployment("pis.py").parsl_config.executors
    assert [getattr(e, "encrypted", None) for e in executors] == [False, False, False]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: inventory {path.resolve()}: encrypted is false: ")
    assert (
        "any host that reaches this machine's worker ports (54000-55000) can register as a "
        "worker, receive tasks and send back pickles that the controller deserializes" in line
    )


def test_example_inventory_is_valid(tmp_path: Path, files: dict[str, str]) -> None:
    data = yaml.safe_load((ROOT / "parsl_configs" / "pis.example.yaml").read_text())
    data["defaults"].update(files)  # its key files live on a user's machine, not here
    inventory = load_inventory(write(tmp_path, data))
    assert [pi.name for pi in inventory.pis] == ["pi-1", "pi-2"]
    assert inventory.pis[0].site_options.batch_size == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("controller_address"), "controller_address: required"),
        (
            lambda d: d.update(controller_address="controller.local"),
            "controller_address: must be an IP address",
        ),
        (lambda d: d.update(piss={}), "unknown key 'piss' (did you mean 'pis'?)"),
        (lambda d: d["pis"]["pi-1"].update(hots="x"), "unknown key 'pis.pi-1.hots'"),
        (lambda d: d["pis"]["pi-1"].pop("host"), "pis.pi-1.host: required"),
        (
            lambda d: d["defaults"].update(python="venv/bin/python"),
            "pis.pi-1.python: must be an absolute path on the Pi",
        ),
        (lambda d: d["pis"]["pi-2"].update(port=70000), "pis.pi-2.port: must be between 1 and"),
        (lambda d: d["pis"]["pi-2"].update(workers="many"), "pis.pi-2.workers: must be an integer"),
        (
            lambda d: d["pis"]["pi-1"].update(site_options={"batch_size": 0}),
            "pis.pi-1.site_options.batch_size: must be at least 1",
        ),
        (
            lambda d: d["pis"]["pi-1"].update(site_options={"device": "tpu"}),
            "pis.pi-1.site_options.device: unknown value 'tpu'",
        ),
        (
            lambda d: d["pis"]["pi-1"].update(ssh_options=["StrictHostKeyChecking=no"]),
            "set host-key checking with host_key_checking",
        ),
        (
            lambda d: d["pis"]["pi-1"].update(host_key_checking="no"),
            "host_key_checking: must be one of yes, accept-new",
        ),
        (
            lambda d: d["pis"]["pi-1"].update(identity_file="/nonexistent/key"),
            "pis.pi-1.identity_file: no such file on this machine: /nonexistent/key",
        ),
        (
            lambda d: d["pis"]["pi-2"].update(site_options=["batch_size=1"]),
            "pis.pi-2.site_options: must be a mapping",
        ),
        (lambda d: d.update(pis={}), "pis: required"),
        (
            lambda d: d["pis"].update(aggregator={"host": "x"}),
            "pis.aggregator: 'aggregator' is the aggregator's executor",
        ),
        (
            lambda d: d.update(aggregator={"host": "x", "site_options": {"batch_size": 1}}),
            "aggregator.site_options: the aggregator trains no site",
        ),
        (lambda d: d.update(aggregator={"hots": "x"}), "unknown key 'aggregator.hots'"),
    ],
)
def test_inventory_mistakes_are_one_line_errors(
    tmp_path: Path, files: dict[str, str], change: object, message: str
) -> None:
    data = two_pis(files)
    assert callable(change)
    change(data)
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, data))
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert str(tmp_path / "pis.yaml") in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not valid YAML at line 2"):
        load_inventory(write(tmp_path, "pis:\n  pi-1: {host: [x}\n"))


def test_a_pi_given_twice_is_an_error(tmp_path: Path, files: dict[str, str]) -> None:
    text = yaml.safe_dump(two_pis(files))
    assert "  pi-2:\n" in text
    twice = text.replace("  pi-2:\n", "  pi-1:\n")
    line = twice.splitlines().index("  pi-1:", twice.splitlines().index("  pi-1:") + 1) + 1
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, twice))
    path = tmp_path / "pis.yaml"
    assert str(err.value) == f"inventory {path}: duplicate key 'pi-1' at line {line}"


def test_cli_without_an_inventory_says_how_to_give_one(tmp_path: Path) -> None:
    done = run_cli("--config", "pis.py", "--inventory", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert f"inventory {tmp_path / 'nope.yaml'} does not exist" in done.stderr
    assert "--inventory FILE or PROXYFLOX_PIS=FILE" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_host_key_checking_may_be_a_bare_yaml_yes(tmp_path: Path, files: dict[str, str]) -> None:
    text = yaml.safe_dump(two_pis(files))
    assert "  user: pi\n" in text
    bare_yes = text.replace("  user: pi\n", "  user: pi\n  host_key_checking: yes\n")
    assert load_inventory(write(tmp_path, bare_yes)).pis[1].host_key_checking == "yes"
    bare_no = text.replace("  user: pi\n", "  user: pi\n  host_key_checking: no\n")
    with pytest.raises(ConfigError, match="host_key_checking: must be one of yes, accept-new"):
        load_inventory(write(tmp_path, bare_no))


def test_cli_refuses_an_inventory_that_names_a_pi_twice(
    tmp_path: Path, files: dict[str, str]
) -> None:
    twice = yaml.safe_dump(two_pis(files)).replace("  pi-2:\n", "  pi-1:\n")
    path = write(tmp_path, twice)
    done = run_cli("--config", "pis.py", "--inventory", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "duplicate key 'pi-1' at line" in done.stderr
    assert not (tmp_path / "runs").exists()
