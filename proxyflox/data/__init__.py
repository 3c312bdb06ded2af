"""Datasets by name and the partitioners that split a training set across sites.

Every site calls :func:`load_dataset` itself, inside its train app, and keeps only its own
partition: training data never passes through the controller.
"""

from __future__ import annotations

import functools

from proxyflox.config import DATASETS, unknown_choice
from proxyflox.data.base import ArrayDataset, DatasetSplits
from proxyflox.data.digits import load_digits_splits

__all__ = ["ArrayDataset", "DatasetSplits", "load_dataset"]


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, data_dir: str | None, seed: int, test_fraction: float) -> DatasetSplits:
    """Load a dataset by name and split off the global test set.

    Cached per process, so a warm worker loads its data once for the whole run.
    """
    if name == "digits":
        return load_digits_splits(seed=seed, test_fraction=test_fraction)
    raise unknown_choice("dataset", name, DATASETS)
