"""Checks of an experiment against its deployment: what the settings alone cannot know.

They run before anything runs, and before a run directory exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxyflox.data import DATASETS
from proxyflox.errors import ConfigError, require_extra, short_repr
from proxyflox.settings import ExperimentConfig, SiteOptions


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
    from proxyflox.models import build_model  # torch: only when resuming

    info = DATASETS[config.dataset].info(data_dir)
    model = build_model(
        config.model,
        info.input_shape,
        info.num_classes,
        depth=config.depth,
        width_multiplier=config.width_multiplier,
    )
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
