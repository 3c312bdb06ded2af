"""Experiment settings: YAML + overrides, and one clear line for anything a user types wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxyflox.errors import ConfigError
from proxyflox.settings import ExperimentConfig, SiteOptions, load_experiment, to_yaml
from tests.helpers import DEFAULT_EXPERIMENT, run_cli


def test_default_experiment_file_holds_the_defaults() -> None:
    assert load_experiment(DEFAULT_EXPERIMENT) == ExperimentConfig(sites=4)


def test_overrides_convert_types_and_reach_nested_sections() -> None:
    config = load_experiment(
        DEFAULT_EXPERIMENT,
        {"rounds": "3", "lr": "0.05", "store.access_log": "true", "sites": "null"},
    )
    assert config.rounds == 3
    assert config.lr == 0.05
    assert config.store.access_log is True
    assert config.sites is None


def test_resolved_settings_round_trip_through_yaml(tmp_path: Path) -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"partition": "dirichlet", "alpha": "0.3"})
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    assert load_experiment(path) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rouns": "3"}, "unknown key 'rouns' (did you mean 'rounds'?)"),
        ({"store.backnd": "file"}, "unknown key 'store.backnd' (did you mean 'store.backend'?)"),
        ({"rounds": "ten"}, "rounds: must be an integer, got 'ten'"),
        ({"rounds": "0"}, "rounds: must be at least 1, got 0"),
        ({"batch_size": "0"}, "batch_size: must be at least 1, got 0"),
        ({"alpha": "0"}, "alpha: must be greater than 0, got 0.0"),
        ({"lr": "-1"}, "lr: must be greater than 0"),
        ({"momentum": "1.5"}, "momentum: must be in [0, 1)"),
        ({"test_fraction": "1"}, "test_fraction: must be between 0 and 1"),
        ({"dataset": "digit"}, "dataset: unknown value 'digit' (did you mean 'digits'?)"),
        ({"model": "resnet"}, "model: unknown value 'resnet'; allowed: cnn"),
        ({"partition": "diriclet"}, "(did you mean 'dirichlet'?)"),
        ({"transfer": "proxies"}, "transfer: unknown value 'proxies' (did you mean 'proxy'?)"),
        ({"store.backend": "s3"}, "store.backend: unknown value 's3'"),
        ({"store.access_log": "maybe"}, "store.access_log: must be true or false"),
        ({"store": "file"}, "store: must be a section"),
        ({"lr": "nan"}, "lr: must be a finite number, got nan"),
        ({"alpha": "inf"}, "alpha: must be a finite number, got inf"),
        ({"round_deadline": "nan"}, "round_deadline: must be a finite number, got nan"),
        ({"strategy.server_lr": "nan"}, "strategy.server_lr: must be a finite number, got nan"),
        ({"strategy.proximal_mu": "inf"}, "strategy.proximal_mu: must be a finite number, got inf"),
    ],
)
def test_bad_settings_name_key_value_and_what_is_allowed(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(DEFAULT_EXPERIMENT, overrides)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("key", ["rounds", "dataset", "name", "store.backend", "lr"])
def test_a_huge_value_is_cut_short_in_the_message(key: str) -> None:
    huge = "x" * 9_999 + "/"
    with pytest.raises(ConfigError) as caught:
        load_experiment(DEFAULT_EXPERIMENT, {key: huge})
    message = str(caught.value)
    assert message.startswith(f"{key}: ")
    assert "'xxxxxxxx" in message
    assert "..." in message
    assert len(message) < 250
    assert "\n" not in message


def test_a_key_given_twice_in_the_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\nrounds: 3\nstore:\n  backend: file\nrounds: 4\n")
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    assert str(caught.value) == f"experiment file {path}: duplicate key 'rounds' at line 5"
    # The same key in two sections, or a key overriding a merged one (<<), is fine.
    path.write_text(
        "alpha: 0.3\nstrategy: {alpha: 0.5}\n"
        "site_options: {a: &a {batch_size: 1, device: cpu}, b: {<<: *a, batch_size: 2}}\n"
    )
    config = load_experiment(path)
    assert (config.alpha, config.strategy.alpha) == (0.3, 0.5)
    assert config.site_options["b"] == SiteOptions(batch_size=2, device="cpu")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 3\nstore: [file\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_experiment(bad)


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- rounds\n- 3\n")
    with pytest.raises(ConfigError, match="must hold a mapping of keys, got list"):
        load_experiment(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounds", "0"], "error: rounds: must be at least 1, got 0"),
        (["--config", "nowhere.py"], "error: config: Parsl config 'nowhere.py' not found"),
        (["--experiment", "missing.yaml"], "error: experiment file missing.yaml does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_no_run_directory(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli(*args, "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_config_module_without_config_is_rejected(tmp_path: Path) -> None:
    module = tmp_path / "empty_site.py"
    module.write_text("executors = []\n")
    done = run_cli("--config", str(module), "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert done.returncode == 2
    assert "must define `config`, a parsl.config.Config (found NoneType)" in done.stderr
    assert not (tmp_path / "runs").exists()
