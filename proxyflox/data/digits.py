"""scikit-learn's 8x8 digits: ships inside the package, so the default experiment runs offline."""

from __future__ import annotations

import math

import numpy as np

from proxyflox.data.base import ArrayDataset, Dataset, DatasetInfo, DatasetSplits
from proxyflox.errors import require_extra

INFO = DatasetInfo(input_shape=(1, 8, 8), num_classes=10)
SIZE = 1797


def load_digits_splits(seed: int, test_fraction: float) -> DatasetSplits:
    """1,797 images as (N, 1, 8, 8) floats in [0, 1], split stratified by label.

    The split is seeded: digits has no official test split, so ``test_fraction`` makes one.
    """
    # scikit-learn is an extra: a site that trains on other data does not install it.
    with require_extra("scikit-learn", "digits", "dataset digits"):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return DatasetSplits(
        train=ArrayDataset(x_train, y_train),
        test=ArrayDataset(x_test, y_test),
        num_classes=INFO.num_classes,
    )


def _load_split(
    data_dir: str | None, train: bool, seed: int, test_fraction: float, download: bool
) -> ArrayDataset:
    splits = load_digits_splits(seed=seed, test_fraction=test_fraction)
    return splits.train if train else splits.test


DATASET = Dataset(
    info=lambda data_dir: INFO,
    load=_load_split,
    # What is left after train_test_split takes ceil(test_fraction * SIZE) for the test split.
    train_size=lambda test_fraction: SIZE - math.ceil(test_fraction * SIZE),
    reads_data_dir=False,
)
