"""Per-site options: from the config module and the experiment, reaching each site's train app."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from proxyflox.controller import RunResult
from proxyflox.errors import ConfigError
from proxyflox.settings import SiteOptions, load_experiment
from proxyflox.sites import load_deployment
from tests.helpers import DEFAULT_EXPERIMENT, run_cli

CONFIG_WITH_OPTIONS = """
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor

config = Config(executors=[
    ThreadPoolExecutor(label="pi-1", max_threads=1),
    ThreadPoolExecutor(label="pi-2", max_threads=1),
    ThreadPoolExecutor(label="aggregator", max_threads=1),
])
site_options = {"pi-1": {"batch_size": 1, "local_epochs": 2}, "pi-2": {"torch_threads": 1}}
"""


@pytest.fixture
def pis_module(tmp_path: Path) -> Path:
    path = tmp_path / "two_pis.py"
    path.write_text(CONFIG_WITH_OPTIONS)
    return path


def test_experiment_options_override_the_module_field_by_field(pis_module: Path) -> None:
    experiment = load_experiment(
        DEFAULT_EXPERIMENT, {"site_options.pi-1.batch_size": "4", "site_options.pi-2.device": "cpu"}
    )
    options = load_deployment(str(pis_module)).options_for(experiment)
    assert options["pi-1"] == SiteOptions(batch_size=4, local_epochs=2)
    assert options["pi-2"] == SiteOptions(torch_threads=1, device="cpu")
    assert options["aggregator"] == SiteOptions()


def test_options_for_an_unknown_executor_are_an_error(pis_module: Path) -> None:
    experiment = load_experiment(DEFAULT_EXPERIMENT, {"site_options.pi-3.batch_size": "4"})
    with pytest.raises(ConfigError, match=r"site_options.pi-3: no executor labelled 'pi-3'"):
        load_deployment(str(pis_module)).options_for(experiment)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"site_options.pi-1.batch_size": "0"}, "site_options.pi-1.batch_size: must be at least 1"),
        ({"site_options.pi-1.device": "gpu"}, "site_options.pi-1.device: unknown value 'gpu'"),
        ({"site_options.pi-1.batchsize": "2"}, "(did you mean 'site_options.pi-1.batch_size'?)"),
    ],
)
def test_bad_site_options_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(DEFAULT_EXPERIMENT, overrides)
    assert message in str(caught.value)


def test_options_reach_each_sites_train_app(
    run_local: Callable[..., RunResult], pis_module: Path
) -> None:
    result = run_local(str(pis_module), rounds=1, sites=2, **{"site_options.pi-2.batch_size": "7"})
    with open(result.run_dir / "sites.csv", newline="") as file:
        rows = {row["executor"]: row for row in csv.DictReader(file)}
    assert (rows["pi-1"]["batch_size"], rows["pi-1"]["local_epochs"]) == ("1", "2")
    assert (rows["pi-2"]["batch_size"], rows["pi-2"]["local_epochs"]) == ("7", "1")
    assert rows["pi-1"]["device"] == "cpu"


def test_cli_takes_site_options_and_rejects_unknown_options(
    tmp_path: Path, pis_module: Path
) -> None:
    runs = str(tmp_path / "runs")
    bad = run_cli("--config", str(pis_module), "--rouns", "1", "--runs_dir", runs, cwd=tmp_path)
    assert bad.returncode == 2
    assert "unknown option '--rouns' (did you mean '--rounds'?)" in bad.stderr
    good = run_cli(
        "--config",
        str(pis_module),
        "--rounds",
        "1",
        "--sites",
        "2",
        "--runs_dir",
        runs,
        "--site_options.pi-2.local_epochs",
        "3",
        cwd=tmp_path,
    )
    assert good.returncode == 0, good.stderr
    assert (
        "local_epochs: 3" in next((tmp_path / "runs").iterdir()).joinpath("config.yaml").read_text()
    )
