"""Checks of an experiment against its deployment: what the settings alone cannot know.

They run before anything runs, and before a run directory exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from proxyflox.data import DATASETS
from proxyflox.errors import ConfigError
from proxyflox.settings import ExperimentConfig, SiteOptions


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
