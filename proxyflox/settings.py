"""Experiment settings: a YAML file plus command-line overrides -> typed, validated dataclasses.

Every key of :class:`ExperimentConfig` (nested sections with a dot, e.g. ``--store.backend``)
can be set in the YAML file and overridden on the command line. Anything a user can type wrong
raises :class:`ConfigError` with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from proxyflox.errors import ConfigError, did_you_mean, unknown_choice

TRANSFER_MODES = ("proxy", "direct")
PARTITIONS = ("iid", "dirichlet", "shards")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "folder")
MODELS = ("cnn", "depth_cnn", "mobilenet")
STORE_BACKENDS = ("file", "redis", "endpoint")
STRATEGY_NAMES = (
    "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedasync", "fedbuff",
)  # fmt: skip
ASYNC_STRATEGIES = ("fedasync", "fedbuff")
STALENESS_FUNCTIONS = ("constant", "polynomial", "hinge")
#: The only place a Redis password is read from (it never enters settings, logs or proxies).
REDIS_PASSWORD_ENV = "PROXYFLOX_REDIS_PASSWORD"
DEVICES = ("cpu", "cuda", "mps")


@dataclass(frozen=True)
class StoreSettings:
    """Where model weights live while they travel between apps."""

    backend: str = "file"
    #: ``file``: the directory; default ``store/`` inside the run directory.
    directory: str | None = None
    #: ``redis``: server address as every site can reach it (never ``localhost`` across
    #: machines); the password comes only from the environment variable REDIS_PASSWORD_ENV.
    host: str = "127.0.0.1"
    port: int = 6379
    #: ``endpoint``: the endpoints file written by ``python -m proxyflox.endpoints up`` (or by
    #: hand) listing every endpoint's UUID and, per executor label, its ProxyStore home.
    endpoints_file: str | None = None
    #: Record every store read/write with its process id in ``store-access.log`` (auditing).
    access_log: bool = False


@dataclass(frozen=True)
class StrategySettings:
    """The server strategy and its hyperparameters (each strategy reads the ones it has)."""

    name: str = "fedavg"
    #: fedprox: strength of the proximal term on each site.
    proximal_mu: float = 0.01
    #: fedavgm, fedadam, fedyogi, fedadagrad, fedbuff: server step size (``null``: the
    #: strategy's default, 1.0 for fedavgm/fedbuff, 0.01 for the FedOpt family).
    server_lr: float | None = None
    #: fedavgm: server momentum.
    server_momentum: float = 0.9
    #: FedOpt family: first/second moment decay and adaptivity.
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    #: fedasync: mixing weight, and the staleness function ``constant``, ``polynomial``
    #: ``(s+1)^-a`` or ``hinge`` (1 up to staleness b, then ``1/(a(s-b)+1)``).
    alpha: float = 0.6
    staleness: str = "polynomial"
    staleness_a: float = 0.5
    staleness_b: float = 4.0
    #: fedbuff: updates per aggregation.
    buffer_size: int = 3


@dataclass(frozen=True)
class SiteOptions:
    """Settings of one site executor (a machine), overriding the experiment's where set.

    They come from the Parsl config module's ``site_options`` (e.g. a Pi inventory) and from the
    experiment's ``site_options`` section, both keyed by executor label.
    """

    batch_size: int | None = None
    local_epochs: int | None = None
    torch_threads: int | None = None
    #: ``cpu`` (default), ``cuda``, ``cuda:1`` or ``mps``.
    device: str | None = None
    #: Where this site reads its data.
    data_dir: str | None = None
    #: ProxyStore home of this site's endpoint (``store.backend: endpoint``); default: the
    #: site's own default home, where ``proxystore-endpoint configure`` puts endpoints.
    proxystore_home: str | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    """One federated-learning experiment; the defaults are the offline digits run."""

    name: str = "digits-fedavg"
    dataset: str = "digits"
    #: Where datasets are read from when they do not ship inside a package (``folder``: each
    #: machine's own data, unless its ``site_options`` set another path).
    data_dir: str | None = None
    #: Let torchvision download the dataset into ``data_dir`` (needs internet on every site).
    download: bool = False
    #: Fraction of ``digits`` held out (stratified) as the global test set; the other datasets
    #: have their own test split.
    test_fraction: float = 0.2
    partition: str = "iid"
    #: Dirichlet concentration over labels, smaller is more skewed (``partition: dirichlet``).
    alpha: float = 0.5
    #: Classes each site holds with ``partition: shards``.
    classes_per_site: int = 2
    #: Cap on each site's training samples (a seeded random subset); ``null``: no cap.
    samples_per_site: int | None = None
    #: Number of sites (data partitions); ``null`` means one per site executor of the Parsl config.
    sites: int | None = None
    rounds: int = 10
    model: str = "cnn"
    #: Number of Conv64+BatchNorm blocks of ``model: depth_cnn``.
    depth: int = 1
    #: Channel scale of ``model: mobilenet``.
    width_multiplier: float = 1.0
    #: Also evaluate each new global model on every site's local test data (per site in
    #: ``rounds.csv``).
    evaluate_sites: bool = False
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0
    #: ``proxy``: weights travel through the store; ``direct``: through Parsl (benchmark baseline).
    transfer: str = "proxy"
    #: torch intra-op threads inside each train/evaluate app.
    torch_threads: int = 1
    #: Label of the Parsl executor that runs init, aggregate and evaluate.
    aggregator: str = "aggregator"
    #: Parent directory of run directories.
    runs_dir: str = "runs"
    store: StoreSettings = field(default_factory=StoreSettings)
    strategy: StrategySettings = field(default_factory=StrategySettings)
    #: Sites per round: a count, or a fraction of all sites (at most one of the two).
    clients_per_round: int | None = None
    fraction: float | None = None
    #: A round (or an asynchronous run) needs at least this many sites' updates.
    min_clients: int = 1
    #: Seconds a round waits for its sites; late updates are dropped (``null``: wait for all).
    round_deadline: float | None = None
    #: How often Parsl retries a failed app (e.g. a site's worker died) before giving up on it.
    retries: int = 1
    #: Asynchronous strategies stop after this many updates or seconds (at least one is needed).
    max_updates: int | None = None
    max_seconds: float | None = None
    #: Executor label -> :class:`SiteOptions`; overrides what the Parsl config module sets.
    site_options: dict[str, SiteOptions] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, in the shape of the YAML file."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Building from YAML + overrides


def load_experiment(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentConfig:
    """Read an experiment YAML file (or the defaults), apply dotted-key overrides, validate.

    Args:
        path: YAML file; ``None`` starts from the defaults.
        overrides: ``{"rounds": 3, "store.backend": "file"}``; values may be strings from the
            command line, they are converted to the key's type.

    Raises:
        ConfigError: on anything invalid, with a one-line message.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return experiment_from_dict(data)


def experiment_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate settings from plain data (a parsed YAML file)."""
    config: ExperimentConfig = _build(ExperimentConfig, data, prefix="")
    validate(config)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"experiment file {path} is not valid YAML{where}: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"experiment file {path} must hold a mapping of keys, got {type(loaded).__name__}"
        )
    return loaded


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        data[head] = value
        return
    section = data.setdefault(head, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{head}: is a section, cannot set {dotted} inside {section!r}")
    _set_dotted(section, rest, value)


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            suggestion = did_you_mean(str(key), known).replace("'", f"'{prefix}", 1)
            raise ConfigError(f"unknown key '{prefix}{key}'{suggestion}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(f"{prefix}{name}", value, hints[name])
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to ``hint`` (bool, int, float, str, Optional, a settings dataclass)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: must be a section (mapping), got {value!r}")
        return _build(hint, value, prefix=f"{key}.")
    args = typing.get_args(hint)
    if typing.get_origin(hint) is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: must be a section (mapping), got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: must be a string, got {value!r}")
    raise TypeError(f"no conversion for {key} of type {hint}")  # a bug, not user input


def _one_of(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise unknown_choice(key, value, allowed)


def validate(config: ExperimentConfig) -> None:
    """Check value ranges and names; raise :class:`ConfigError` naming the first bad key."""
    _one_of("dataset", config.dataset, DATASETS)
    _one_of("model", config.model, MODELS)
    _one_of("partition", config.partition, PARTITIONS)
    _one_of("transfer", config.transfer, TRANSFER_MODES)
    _one_of("store.backend", config.store.backend, STORE_BACKENDS)
    positive_ints = {
        "rounds": config.rounds,
        "local_epochs": config.local_epochs,
        "batch_size": config.batch_size,
        "torch_threads": config.torch_threads,
        "classes_per_site": config.classes_per_site,
        "depth": config.depth,
    }
    if config.sites is not None:
        positive_ints["sites"] = config.sites
    if config.samples_per_site is not None:
        positive_ints["samples_per_site"] = config.samples_per_site
    for key, value in positive_ints.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if not 0.0 < config.test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction: must be between 0 and 1 (exclusive), got {config.test_fraction}"
        )
    if config.alpha <= 0:
        raise ConfigError(f"alpha: must be greater than 0, got {config.alpha}")
    if config.width_multiplier <= 0:
        raise ConfigError(
            f"width_multiplier: must be greater than 0, got {config.width_multiplier}"
        )
    if config.lr <= 0:
        raise ConfigError(f"lr: must be greater than 0, got {config.lr}")
    if not 0.0 <= config.momentum < 1.0:
        raise ConfigError(f"momentum: must be in [0, 1), got {config.momentum}")
    for label, options in config.site_options.items():
        validate_site_options(options, f"site_options.{label}")
    _validate_strategy(config)
    if not 0 < config.store.port < 65536:
        raise ConfigError(f"store.port: must be a TCP port (1-65535), got {config.store.port}")
    if config.store.backend == "endpoint" and not config.store.endpoints_file:
        raise ConfigError(
            "store.endpoints_file: required with store.backend endpoint "
            "(python -m proxyflox.endpoints up writes one)"
        )
    if not config.name or "/" in config.name:
        raise ConfigError(f"name: must be a non-empty name without '/', got {config.name!r}")


def _validate_strategy(config: ExperimentConfig) -> None:
    strategy = config.strategy
    _one_of("strategy.name", strategy.name, STRATEGY_NAMES)
    _one_of("strategy.staleness", strategy.staleness, STALENESS_FUNCTIONS)
    non_negative = {"strategy.proximal_mu": strategy.proximal_mu, "strategy.tau": strategy.tau,
                    "strategy.staleness_a": strategy.staleness_a,
                    "strategy.staleness_b": strategy.staleness_b}  # fmt: skip
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be at least 0, got {value}")
    if strategy.server_lr is not None and strategy.server_lr <= 0:
        raise ConfigError(f"strategy.server_lr: must be greater than 0, got {strategy.server_lr}")
    decays = {
        "strategy.server_momentum": strategy.server_momentum,
        "strategy.beta1": strategy.beta1,
        "strategy.beta2": strategy.beta2,
    }
    for key, value in decays.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key}: must be in [0, 1), got {value}")
    if not 0.0 < strategy.alpha <= 1.0:
        raise ConfigError(f"strategy.alpha: must be in (0, 1], got {strategy.alpha}")
    if strategy.buffer_size < 1:
        raise ConfigError(f"strategy.buffer_size: must be at least 1, got {strategy.buffer_size}")
    if config.clients_per_round is not None and config.fraction is not None:
        raise ConfigError("clients_per_round and fraction: set at most one of the two")
    if config.clients_per_round is not None and config.clients_per_round < 1:
        raise ConfigError(f"clients_per_round: must be at least 1, got {config.clients_per_round}")
    if config.fraction is not None and not 0.0 < config.fraction <= 1.0:
        raise ConfigError(f"fraction: must be in (0, 1], got {config.fraction}")
    if config.retries < 0:
        raise ConfigError(f"retries: must be at least 0, got {config.retries}")
    if config.min_clients < 1:
        raise ConfigError(f"min_clients: must be at least 1, got {config.min_clients}")
    if config.round_deadline is not None and config.round_deadline <= 0:
        raise ConfigError(f"round_deadline: must be greater than 0, got {config.round_deadline}")
    if config.max_updates is not None and config.max_updates < 1:
        raise ConfigError(f"max_updates: must be at least 1, got {config.max_updates}")
    if config.max_seconds is not None and config.max_seconds <= 0:
        raise ConfigError(f"max_seconds: must be greater than 0, got {config.max_seconds}")
    if (
        strategy.name in ASYNC_STRATEGIES
        and config.max_updates is None
        and config.max_seconds is None
    ):
        raise ConfigError(
            f"max_updates or max_seconds: {strategy.name} is asynchronous and needs a budget"
        )


def validate_site_options(options: SiteOptions, key: str) -> None:
    """Check one site's options; ``key`` names where they came from in the message."""
    for name in ("batch_size", "local_epochs", "torch_threads"):
        value = getattr(options, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}.{name}: must be at least 1, got {value}")
    if options.device is not None and options.device.split(":", 1)[0] not in DEVICES:
        raise unknown_choice(f"{key}.device", options.device, DEVICES)


def merge_site_options(base: SiteOptions, override: SiteOptions) -> SiteOptions:
    """``override``'s fields where set, else ``base``'s."""
    return SiteOptions(
        **{
            f.name: getattr(override, f.name)
            if getattr(override, f.name) is not None
            else getattr(base, f.name)
            for f in fields(SiteOptions)
        }
    )


def site_options_from(data: Mapping[str, Any], key: str) -> dict[str, SiteOptions]:
    """Build and validate ``{label: SiteOptions}`` from plain data (YAML or a config module)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{key}: must be a mapping of executor label to options, got {data!r}")
    built = {
        str(label): _coerce(f"{key}.{label}", value, SiteOptions) for label, value in data.items()
    }
    for label, options in built.items():
        validate_site_options(options, f"{key}.{label}")
    return built


# ----------------------------------------------------------------------------------------------
# Command line


def option_names(cls: type[Any] = ExperimentConfig, prefix: str = "") -> list[str]:
    """Dotted names of every setting, e.g. ``["name", ..., "store.backend"]``."""
    names: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            names.extend(option_names(hints[f.name], prefix=f"{prefix}{f.name}."))
        elif typing.get_origin(hints[f.name]) is dict:
            continue  # per-label sections are set in YAML, or as --section.LABEL.KEY VALUE
        else:
            names.append(f"{prefix}{f.name}")
    return names


def add_override_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--KEY VALUE`` for every setting (values stay strings until validation)."""
    group = parser.add_argument_group("experiment settings (override the YAML file)")
    for name in option_names():
        group.add_argument(
            f"--{name}", dest=f"set:{name}", metavar="VALUE", default=argparse.SUPPRESS
        )


def overrides_from_args(args: argparse.Namespace, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The ``--KEY VALUE`` settings the user actually gave.

    Args:
        args: Parsed arguments (from a parser set up by :func:`add_override_options`).
        extra: Leftover arguments; only ``--site_options.LABEL.KEY VALUE`` pairs are allowed.
    """
    overrides = {
        key.removeprefix("set:"): value
        for key, value in vars(args).items()
        if key.startswith("set:")
    }
    tokens = list(extra)
    while tokens:
        token = tokens.pop(0)
        name, has_value, value = token.partition("=")
        if not name.startswith("--site_options.") or name.count(".") != 2:
            raise ConfigError(
                f"unknown option {token!r}{did_you_mean(name, ['--' + n for n in option_names()])}"
            )
        if not has_value:
            if not tokens:
                raise ConfigError(f"{name}: needs a value")
            value = tokens.pop(0)
        overrides[name.removeprefix("--")] = value
    return overrides


def to_yaml(config: ExperimentConfig, extra: Mapping[str, Any] | None = None) -> str:
    """The resolved settings as YAML (what ``config.yaml`` in a run directory holds)."""
    data = config.to_dict()
    if extra:
        data.update(extra)
    return yaml.safe_dump(data, sort_keys=False)
