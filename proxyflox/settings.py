"""Experiment settings: a YAML file plus command-line overrides -> typed, validated models.

Every key of :class:`ExperimentConfig` (nested sections with a dot, e.g. ``--store.backend``)
can be set in the YAML file and overridden on the command line. Anything a user can type wrong
raises :class:`ConfigError` with one line naming the key, the value and what is allowed. Names
(datasets, models, strategies, ...) are checked against the registries of their packages.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, Field, model_validator

from proxyflox.attacks import ATTACKS
from proxyflox.codecs.settings import CodecSettings, CompressionSettings
from proxyflox.data import DATASETS
from proxyflox.data.partition import PARTITIONS
from proxyflox.errors import ConfigError, did_you_mean, short_repr, unknown_choice
from proxyflox.models import MODELS
from proxyflox.schema import (
    Bool,
    Count,
    Decay,
    Device,
    Float,
    Int,
    Maybe,
    Names,
    Positive,
    Settings,
    Share,
    Str,
    one_of,
    read_yaml_mapping,
    validated,
)
from proxyflox.stores import BACKENDS
from proxyflox.stores.settings import StoreSettings
from proxyflox.strategies import STRATEGIES, StrategySettings
from proxyflox.tree import TreeSettings

TRANSFER_MODES = ("proxy", "direct")


def _run_name(value: str) -> str:
    # It names a directory: no separator, no NUL or other control character.
    if not value or "/" in value or not value.isprintable():
        raise ValueError(
            f"must be a non-empty name of printable characters without '/', got {short_repr(value)}"
        )
    return value


class SiteOptions(Settings):
    """Settings of one site executor (a machine), overriding the experiment's where set.

    They come from the Parsl config module's ``site_options`` (e.g. a Pi inventory) and from the
    experiment's ``site_options`` section, both keyed by executor label.
    """

    batch_size: Maybe[Count] = None
    local_epochs: Maybe[Count] = None
    torch_threads: Maybe[Count] = None
    #: ``cpu`` (default), ``cuda``, ``cuda:1`` or ``mps``.
    device: Maybe[Device] = None
    #: Where this site reads its data.
    data_dir: Maybe[Str] = None
    #: ProxyStore home of this site's endpoint (``store.backend: endpoint``); default: the
    #: site's own default home, where ``proxystore-endpoint configure`` puts endpoints.
    proxystore_home: Maybe[Str] = None
    #: ``store.backend: multi``: the connector this executor puts into (default ``store.put``).
    store_put: Maybe[Str] = None
    #: ``store.backend: multi``: the connectors this executor can reach (default
    #: ``store.read``); a comma-separated list on the command line.
    store_read: Maybe[Names] = None
    #: This site's codec, key by key over the experiment's ``compression``.
    compression: Maybe[CodecSettings] = None
    #: Where this site keeps its own state between rounds (error-feedback residuals).
    state_dir: Maybe[Str] = None
    #: Experiments only: this site poisons its updates (``sign_flip``, see ``attacks.py``).
    attack: Maybe[Annotated[Str, one_of(ATTACKS)]] = None
    #: How far a ``sign_flip`` attack pushes: ``received - attack_scale * change`` (default 1).
    attack_scale: Maybe[Positive] = None


class ExperimentConfig(Settings):
    """One federated-learning experiment; the defaults are the offline digits run."""

    name: Annotated[Str, AfterValidator(_run_name)] = "digits-fedavg"
    dataset: Annotated[Str, one_of(DATASETS)] = "digits"
    #: Where datasets are read from when they do not ship inside a package (``folder``: each
    #: machine's own data, unless its ``site_options`` set another path).
    data_dir: Maybe[Str] = None
    #: Let torchvision download the dataset into ``data_dir`` (needs internet on every site).
    download: Bool = False
    #: Fraction of ``digits`` held out (stratified) as the global test set; the other datasets
    #: have their own test split.
    test_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.2
    partition: Annotated[Str, one_of(PARTITIONS)] = "iid"
    #: Dirichlet concentration over labels, smaller is more skewed (``partition: dirichlet``).
    alpha: Positive = 0.5
    #: Classes each site holds with ``partition: shards``.
    classes_per_site: Count = 2
    #: Cap on each site's training samples (a seeded random subset); ``null``: no cap.
    samples_per_site: Maybe[Count] = None
    #: Number of sites (data partitions); ``null`` means one per site executor of the Parsl config.
    sites: Maybe[Count] = None
    rounds: Count = 10
    model: Annotated[Str, one_of(MODELS)] = "cnn"
    #: Number of Conv64+BatchNorm blocks of ``model: depth_cnn``.
    depth: Count = 1
    #: Channel scale of ``model: mobilenet``.
    width_multiplier: Positive = 1.0
    #: Also evaluate each new global model on every site's local test data (per site in
    #: ``rounds.csv``).
    evaluate_sites: Bool = False
    local_epochs: Count = 1
    batch_size: Count = 32
    lr: Positive = 0.1
    momentum: Decay = 0.9
    #: Every random draw of the run derives from it (numpy's and scikit-learn's range).
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] = 0
    #: ``proxy``: weights travel through the store; ``direct``: through Parsl (the baseline).
    transfer: Annotated[Str, one_of(TRANSFER_MODES)] = "proxy"
    #: torch intra-op threads inside each train/evaluate app.
    torch_threads: Count = 1
    #: Label of the Parsl executor that runs init, aggregate and evaluate.
    aggregator: Str = "aggregator"
    #: Parent directory of run directories.
    runs_dir: Str = "runs"
    store: StoreSettings = StoreSettings()
    strategy: StrategySettings = StrategySettings()
    #: Sites per round: a count, or a fraction of all sites (at most one of the two).
    clients_per_round: Maybe[Count] = None
    fraction: Maybe[Share] = None
    #: A round (or an asynchronous run) needs at least this many sites' updates.
    min_clients: Count = 1
    #: Seconds a round waits for its sites; late updates are dropped (``null``: wait for all).
    round_deadline: Maybe[Positive] = None
    #: How often Parsl retries a failed app (e.g. a site's worker died) before giving up on it.
    retries: Annotated[Int, Field(ge=0)] = 1
    #: Asynchronous strategies stop after this many updates or seconds (at least one is needed).
    max_updates: Maybe[Count] = None
    max_seconds: Maybe[Positive] = None
    #: How sites encode their updates and the aggregator the global model (see the README).
    compression: CompressionSettings = CompressionSettings()
    #: Where each site keeps its own state between rounds (error-feedback residuals), on the
    #: site's machine; ``~`` is the site's home. Per site: ``site_options.LABEL.state_dir``.
    site_state_dir: Str = "~/.proxyflox/site-state"
    #: Record the run in Parsl's own monitoring database, ``monitoring.db`` in the run directory
    #: (open it with ``parsl-visualize``).
    monitoring: Bool = False
    #: Executor label -> :class:`SiteOptions`; overrides what the Parsl config module sets.
    site_options: dict[Str, SiteOptions] = Field(default_factory=dict)
    #: Groups of sites with an aggregator of their own (see the README); none: a flat run.
    tree: TreeSettings = TreeSettings()

    @model_validator(mode="after")
    def _check_across_sections(self) -> ExperimentConfig:
        # The sections' names are checked here: their packages' registries import the sections.
        if self.store.backend not in BACKENDS:
            raise unknown_choice("store.backend", self.store.backend, BACKENDS)
        for name, connector in self.store.connectors.items():
            if connector.backend not in BACKENDS:
                raise unknown_choice(
                    f"store.connectors.{name}.backend", connector.backend, BACKENDS
                )
        if self.strategy.name not in STRATEGIES:
            raise unknown_choice("strategy.name", self.strategy.name, STRATEGIES)
        if self.clients_per_round is not None and self.fraction is not None:
            raise ConfigError("clients_per_round and fraction: set at most one of the two")
        compressed = self.compression.codec != "none" or self.compression.lossless != "none"
        compressed |= self.compression.broadcast != "exact"
        compressed |= any(site.compression is not None for site in self.site_options.values())
        if compressed and self.transfer != "proxy":
            raise ConfigError(
                "compression: codecs work in the store path; they need transfer: proxy"
            )
        budget = self.max_updates is not None or self.max_seconds is not None
        if STRATEGIES[self.strategy.name].asynchronous and not budget:
            raise ConfigError(
                f"max_updates or max_seconds: {self.strategy.name} is asynchronous and needs a "
                "budget"
            )
        return self


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
    data = {} if path is None else read_yaml_mapping(Path(path), f"experiment file {path}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return experiment_from_dict(data)


def experiment_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate settings from plain data (a parsed YAML file)."""
    return validated(ExperimentConfig, data)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        data[head] = value
        return
    section = data.setdefault(head, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{head}: is a section, cannot set {dotted} inside {short_repr(section)}")
    _set_dotted(section, rest, value)


def validate_site_options(options: SiteOptions | Mapping[str, Any], key: str) -> SiteOptions:
    """One site's options, built from plain data and checked; ``key`` names them in messages."""
    return validated(SiteOptions, options, key)


def merge_site_options(base: SiteOptions | Mapping[str, Any], override: SiteOptions) -> SiteOptions:
    """``override``'s options where set, else ``base``'s.

    ``base`` is options, or a store backend's plain ``{"proxystore_home": ...}``.
    """
    merged = {**dict(base), **override.model_dump(exclude_none=True)}
    below = dict(base).get("compression")
    if below is not None and override.compression is not None:  # key by key
        merged["compression"] = {
            **_given(below),
            **override.compression.model_dump(exclude_unset=True),
        }
    return SiteOptions.model_validate(merged)


def site_codec(experiment: CompressionSettings, site: CodecSettings | None) -> CodecSettings:
    """A site's codec: its own ``compression`` keys over the experiment's."""
    common = experiment.model_dump(exclude={"broadcast"})
    return CodecSettings.model_validate({**common, **(_given(site) if site else {})})


def _given(settings: Settings | Mapping[str, Any]) -> dict[str, Any]:
    """The keys that were set (not defaulted)."""
    if isinstance(settings, Settings):
        return settings.model_dump(exclude_unset=True)
    return dict(settings)


def site_options_from(data: Mapping[str, Any], key: str) -> dict[str, SiteOptions]:
    """Build and validate ``{label: SiteOptions}`` from plain data (YAML or a config module)."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{key}: must be a mapping of executor label to options, got {short_repr(data)}"
        )
    return {
        str(label): validate_site_options(value, f"{key}.{label}") for label, value in data.items()
    }


# ----------------------------------------------------------------------------------------------
# Command line


def option_names(cls: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[str]:
    """Dotted names of every setting, e.g. ``["name", ..., "store.backend"]``."""
    names: list[str] = []
    for name, field in cls.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names.extend(option_names(kind, prefix=f"{prefix}{name}."))
        elif typing.get_origin(kind) is not dict:
            # per-label sections are set in YAML, or as --section.LABEL.KEY VALUE
            names.append(f"{prefix}{name}")
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
        extra: Leftover arguments; only ``--site_options.LABEL.KEY VALUE`` and
            ``--store.connectors.NAME.KEY VALUE`` pairs are allowed.
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
        if "password" in name.lower():  # never echo what follows: it is a secret
            raise ConfigError(
                f"{name}: not a setting; a password is never given on the command line or in "
                "a file: the Redis password is read from PROXYFLOX_REDIS_PASSWORD"
            )
        per_label = name.startswith("--site_options.") and name.count(".") in (2, 3)
        per_label |= name.startswith("--store.connectors.") and name.count(".") == 3
        if not per_label:
            known = ["--" + n for n in option_names()]
            raise ConfigError(f"unknown option {short_repr(token)}{did_you_mean(name, known)}")
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
