"""Datasets by name and the partitioners that split a training set across sites.

Every site loads its data itself, inside its apps, and keeps only its own partition: training
data never passes through the controller. ``folder`` is a site's own data on its own disk and is
not partitioned at all.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

from proxyflox.data import cifar10, digits, fashion_mnist, mnist
from proxyflox.data.base import ArrayDataset, DatasetInfo, DatasetSplits
from proxyflox.data.folder import LocalData, load_folder
from proxyflox.errors import ConfigError, unknown_choice
from proxyflox.settings import DATASETS, ExperimentConfig, SiteOptions

__all__ = [
    "ArrayDataset",
    "DatasetInfo",
    "DatasetSplits",
    "LocalData",
    "check_data_settings",
    "dataset_info",
    "load_dataset",
    "load_folder",
    "load_split",
]

TRAIN, TEST = "train", "test"

#: Datasets read through torchvision: name -> (loader, facts known without reading any file).
_TORCHVISION: dict[str, tuple[Callable[..., ArrayDataset], DatasetInfo]] = {
    "mnist": (mnist.load_mnist, mnist.INFO),
    "fashion_mnist": (fashion_mnist.load_fashion_mnist, fashion_mnist.INFO),
    "cifar10": (cifar10.load_cifar10, cifar10.INFO),
}


def dataset_info(name: str, data_dir: str | None) -> DatasetInfo:
    """Input shape and classes of a dataset.

    Known without reading anything for the built-in datasets; for ``folder`` it is the data at
    ``data_dir`` (on the aggregator: the copy that holds the global test set).
    """
    if name == "digits":
        return digits.INFO
    if name in _TORCHVISION:
        return _TORCHVISION[name][1]
    if name == "folder":
        return load_folder(_folder_path(data_dir)).info
    raise unknown_choice("dataset", name, DATASETS)


@functools.lru_cache(maxsize=8)
def load_split(
    name: str,
    data_dir: str | None,
    split: str,
    seed: int,
    test_fraction: float,
    download: bool = False,
) -> ArrayDataset:
    """One split (``train`` or ``test``) of a dataset, whole.

    Only that split is read, so an aggregator holds no training set. Cached per process, so a
    warm worker loads its data once for the whole run. ``seed`` and ``test_fraction`` make the
    split of ``digits``, which has none of its own; the others have an official test split. For
    ``folder``, ``test`` is the local test split, or all of the data when there is none.
    """
    if split not in (TRAIN, TEST):
        raise ValueError(f"split must be {TRAIN!r} or {TEST!r}, got {split!r}")
    if name == "digits":
        splits = digits.load_digits_splits(seed=seed, test_fraction=test_fraction)
        return splits.train if split == TRAIN else splits.test
    if name in _TORCHVISION:
        return _TORCHVISION[name][0](data_dir, train=split == TRAIN, download=download)
    if name == "folder":
        local = load_folder(_folder_path(data_dir))
        return local.test if split == TEST and local.test is not None else local.train
    raise unknown_choice("dataset", name, DATASETS)


def load_dataset(
    name: str, data_dir: str | None, seed: int, test_fraction: float, download: bool = False
) -> DatasetSplits:
    """Both splits of a dataset by name."""
    info = dataset_info(name, data_dir)
    return DatasetSplits(
        train=load_split(name, data_dir, TRAIN, seed, test_fraction, download),
        test=load_split(name, data_dir, TEST, seed, test_fraction, download),
        num_classes=info.num_classes,
        classes=info.classes,
    )


#: Training-set sizes of the built-in datasets (their official train splits).
_TRAIN_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}
_DIGITS_SIZE = 1797


def known_train_size(dataset: str, test_fraction: float) -> int | None:
    """How many training samples a built-in dataset has (``None`` for ``folder``)."""
    if dataset == "digits":  # split off here, as scikit-learn's train_test_split counts
        return _DIGITS_SIZE - math.ceil(test_fraction * _DIGITS_SIZE)
    return _TRAIN_SIZES.get(dataset)


def check_data_settings(
    config: ExperimentConfig, options: Mapping[str, SiteOptions], site_labels: Sequence[str]
) -> None:
    """What can be checked about the data before anything runs (the files themselves are only
    seen where they are read).

    Args:
        config: The experiment.
        options: Every executor's options, by label.
        site_labels: The site executors' labels, in config order.

    Raises:
        ConfigError: a machine that reads a dataset from ``data_dir`` has none, or ``folder``
            has more sites than site executors.
    """
    num_sites = config.sites or len(site_labels)
    samples = known_train_size(config.dataset, config.test_fraction)
    if samples is not None and num_sites > samples:
        raise ConfigError(
            f"sites: {num_sites} sites but {config.dataset} has only {samples} training samples; "
            "every site needs at least one"
        )
    if config.dataset == "folder" and num_sites > len(site_labels):
        # A site is a machine with its own data: two sites on one executor would read the
        # same files and train on the same samples twice.
        raise ConfigError(
            f"sites: dataset folder needs one site executor per site, got sites={num_sites} "
            f"and {len(site_labels)} site executor(s)"
        )
    if config.dataset not in (*_TORCHVISION, "folder") or config.data_dir is not None:
        return
    used = [*site_labels[:num_sites], config.aggregator]
    missing = [label for label in used if options.get(label, SiteOptions()).data_dir is None]
    if missing:
        raise ConfigError(
            f"data_dir: dataset {config.dataset} is read from data_dir, which is not set for "
            f"executor(s) {', '.join(missing)}; set data_dir, or "
            f"site_options.{missing[0]}.data_dir"
        )


def _folder_path(data_dir: str | None) -> str:
    if data_dir is None:
        raise ConfigError(
            "data_dir: dataset folder reads each machine's own data_dir, which is not set; set "
            "data_dir, or site_options.LABEL.data_dir per executor (the aggregator's holds the "
            "global test set)"
        )
    return data_dir
