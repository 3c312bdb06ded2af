"""Checks of an experiment against its deployment: what the settings alone cannot know.

They run before anything runs, and before a run directory exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxyflox.data import DATASETS, DatasetInfo
from proxyflox.errors import ConfigError, require_extra, short_repr
from proxyflox.settings import ExperimentConfig, SiteOptions
from proxyflox.strategies import EveryUpdateStrategy, build_strategy

if TYPE_CHECKING:
    import torch

MEGABYTE = 2**20


def check_monitoring(config: ExperimentConfig) -> None:
    """Check that Parsl's monitoring database can be written (``monitoring: true``).

    Raises:
        ConfigError: its packages (the ``monitoring`` extra) are not installed.
    """
    if config.monitoring:
        with require_extra("sqlalchemy", "monitoring", "monitoring"):
            import sqlalchemy  # noqa: F401  (what Parsl's database manager needs)


def check_data_settings(
    config: ExperimentConfig, options: Mapping[str, SiteOptions], site_labels: Sequence[str]
) -> None:
    """Check what can be known about the data before anything runs.

    The files themselves are only seen where they are read.

    Args:
        config: The experiment.
        options: Every executor's options, by label.
        site_labels: The site executors' labels, in config order.

    Raises:
        ConfigError: a machine that reads a dataset from ``data_dir`` has none, or a dataset of
            each machine's own data (``folder``) has more sites than site executors.
    """
    dataset = DATASETS[config.dataset]
    num_sites = config.sites or len(site_labels)
    samples = dataset.train_size(config.test_fraction)
    if samples is not None and num_sites > samples:
        raise ConfigError(
            f"sites: {num_sites} sites but {config.dataset} has only {samples} training samples; "
            "every site needs at least one"
        )
    if dataset.local and num_sites > len(site_labels):
        # A site is a machine with its own data: two sites on one executor would read the
        # same files and train on the same samples twice.
        raise ConfigError(
            f"sites: dataset {config.dataset} needs one site executor per site, got "
            f"sites={num_sites} and {len(site_labels)} site executor(s)"
        )
    if config.partition == "shards" and not dataset.local:
        classes = dataset.info(config.data_dir).num_classes  # known without reading any file
        if config.classes_per_site > classes:
            raise ConfigError(
                f"classes_per_site: must be between 1 and the dataset's {classes} classes, "
                f"got {config.classes_per_site}"
            )
    if not dataset.reads_data_dir or config.data_dir is not None:
        return
    used = [*site_labels[:num_sites], config.aggregator]
    missing = [label for label in used if options.get(label, SiteOptions()).data_dir is None]
    if missing:
        raise ConfigError(
            f"data_dir: dataset {config.dataset} is read from data_dir, which is not set for "
            f"executor(s) {', '.join(missing)}; set data_dir, or "
            f"site_options.{missing[0]}.data_dir"
        )


def check_resume_checkpoint(
    config: ExperimentConfig, weights: Mapping[str, Any], data_dir: str | None, where: str
) -> None:
    """Check that a checkpoint holds the weights of the experiment's model.

    Name for name and shape for shape: else every site would fail its first round.

    Args:
        config: The run's settings.
        weights: The checkpoint's arrays.
        data_dir: The aggregator's ``data_dir`` (for ``folder``: its classes).
        where: Names the run directory in the message.

    Raises:
        ConfigError: one line naming the first difference.
    """
    model = _untrained_model(config, DATASETS[config.dataset].info(data_dir))
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(array.shape) for name, array in weights.items()}
    if expected == found:
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        detail = (
            f"it lacks {short_repr(missing[0])}" if missing else f"it has {short_repr(extra[0])}"
        )
    else:
        name = next(n for n in expected if expected[n] != found[n])
        detail = f"{name!r} has shape {found[name]}, the model needs {expected[name]}"
    raise ConfigError(
        f"{where}: the checkpoint holds the weights of another model than {config.model} "
        f"({len(found)} arrays against {len(expected)}; {detail})"
    )


def check_every_update_strategy(
    config: ExperimentConfig, sites_per_round: int, data_dir: str | None
) -> None:
    """Check that a strategy holding every update at once can work and fits in memory.

    Args:
        config: The experiment.
        sites_per_round: How many sites train in a round.
        data_dir: The aggregator's ``data_dir`` (for ``folder``: its classes decide the model).

    Raises:
        ConfigError: too few updates per round for ``strategy.byzantine`` attackers (with the
            sites sampled, or with as few as ``min_clients`` when some fail or are late), or an
            aggregation that would need more than ``strategy.max_memory_mb``.
    """
    strategy = build_strategy(config.strategy)
    if not isinstance(strategy, EveryUpdateStrategy):
        return
    problem = strategy.problem_with(sites_per_round)
    if problem is not None:
        key = "clients_per_round" if config.clients_per_round is not None else "sites"
        key = "fraction" if config.fraction is not None else key
        raise ConfigError(f"{key}: rounds of {sites_per_round} sites: {problem}")
    if strategy.problem_with(config.min_clients) is not None:
        fewest = next(
            n
            for n in range(config.min_clients, sites_per_round + 1)
            if all(strategy.problem_with(m) is None for m in range(n, sites_per_round + 1))
        )
        raise ConfigError(
            f"min_clients: a round may aggregate as few as min_clients={config.min_clients} "
            f"updates, but {strategy.problem_with(config.min_clients)}; set min_clients to at "
            f"least {fewest}"
        )
    model_bytes = _model_bytes(config, data_dir)
    if model_bytes is None:
        return
    needed = strategy.aggregation_bytes(sites_per_round, model_bytes)
    limit = config.strategy.max_memory_mb * MEGABYTE
    if needed > limit:
        raise ConfigError(
            f"strategy.max_memory_mb: {strategy.name} holds all {sites_per_round} updates of a "
            f"round at once, about {needed / MEGABYTE:.1f} MB for {config.model} "
            f"({model_bytes / MEGABYTE:.2f} MB each), over the limit of "
            f"{config.strategy.max_memory_mb:g} MB; sample fewer sites (clients_per_round) or "
            "raise the limit"
        )


def _model_bytes(config: ExperimentConfig, data_dir: str | None) -> int | None:
    """Bytes of the experiment's model; ``None`` where its dataset cannot be read here.

    The model is built on torch's ``meta`` device: shapes without any memory.
    """
    import torch

    try:
        info = DATASETS[config.dataset].info(data_dir)
    except (ConfigError, OSError):
        return None  # each machine's own data (folder) that the controller does not have
    with torch.device("meta"):
        model = _untrained_model(config, info)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _untrained_model(config: ExperimentConfig, info: DatasetInfo) -> torch.nn.Module:
    """The experiment's architecture for the dataset's inputs and classes."""
    from proxyflox.models import build_model  # torch: only for the checks that need a model

    return build_model(
        config.model,
        info.input_shape,
        info.num_classes,
        depth=config.depth,
        width_multiplier=config.width_multiplier,
    )
