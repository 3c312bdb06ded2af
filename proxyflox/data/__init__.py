"""Datasets by name and the partitioners that split a training set across sites.

Every site loads its data itself, inside its apps, and keeps only its own partition: training
data never passes through the controller. ``folder`` is a site's own data on its own disk and is
not partitioned at all.
"""

from __future__ import annotations

import functools

from proxyflox.data import cifar10, digits, fashion_mnist, folder, mnist
from proxyflox.data.base import ArrayDataset, Dataset, DatasetInfo, DatasetSplits
from proxyflox.data.folder import LocalData, load_folder
from proxyflox.errors import unknown_choice

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "Dataset",
    "DatasetInfo",
    "DatasetSplits",
    "LocalData",
    "dataset_info",
    "load_dataset",
    "load_folder",
    "load_split",
]

TRAIN, TEST = "train", "test"

#: ``dataset`` name -> how to read it; a new dataset is one module and one entry here.
DATASETS: dict[str, Dataset] = {
    "digits": digits.DATASET,
    "mnist": mnist.DATASET,
    "fashion_mnist": fashion_mnist.DATASET,
    "cifar10": cifar10.DATASET,
    "folder": folder.DATASET,
}


def _dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise unknown_choice("dataset", name, DATASETS)
    return DATASETS[name]


def dataset_info(name: str, data_dir: str | None) -> DatasetInfo:
    """Input shape and classes of a dataset.

    Known without reading anything for the built-in datasets; for ``folder`` it is the data at
    ``data_dir`` (on the aggregator: the copy that holds the global test set).
    """
    return _dataset(name).info(data_dir)


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
    return _dataset(name).load(data_dir, split == TRAIN, seed, test_fraction, download)


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
