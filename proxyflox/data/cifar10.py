"""CIFAR-10 through torchvision.

Reads the python pickle batches under ``data_dir/cifar-10-batches-py/``, verified against
torchvision's published MD5 sums.
"""

from __future__ import annotations

import numpy as np
from torchvision.datasets import CIFAR10

from proxyflox.data.base import (
    ArrayDataset,
    DatasetInfo,
    images_to_array,
    open_torchvision,
    torchvision_dataset,
)

INFO = DatasetInfo(input_shape=(3, 32, 32), num_classes=10)

#: The class that reads the batches and checks their MD5 sums. Tests that write tiny batches in
#: the real format set this to a subclass whose ``train_list``/``test_list``/``meta`` carry the
#: checksums of *their* files; the real path always uses torchvision's class as it is.
DATASET_CLASS: type[CIFAR10] = CIFAR10


def load_cifar10(data_dir: str | None, *, train: bool, download: bool) -> ArrayDataset:
    """50,000 training or 10,000 test images as (N, 3, 32, 32) floats in [0, 1]."""
    dataset = open_torchvision(
        DATASET_CLASS,
        "cifar10",
        data_dir,
        train=train,
        download=download,
        expected="cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    )
    # torchvision keeps the images as (N, 32, 32, 3) uint8.
    return ArrayDataset(
        images_to_array(dataset.data, channels_last=True), np.asarray(dataset.targets, np.int64)
    )


DATASET = torchvision_dataset(load_cifar10, INFO, train_size=50_000)
