"""CIFAR-10 through torchvision.

Reads the python pickle batches under ``data_dir/cifar-10-batches-py/``, verified against
torchvision's published MD5 sums.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from proxyflox.data.base import (
    ArrayDataset,
    DatasetInfo,
    images_to_array,
    open_torchvision,
    torchvision_dataset,
)

INFO = DatasetInfo(input_shape=(3, 32, 32), num_classes=10)

if TYPE_CHECKING:
    from torchvision.datasets import CIFAR10

    #: The class that reads the batches and checks their MD5 sums: torchvision's, as it is.
    #: Tests that write tiny batches in the real format set this to a subclass whose
    #: ``train_list``/``test_list``/``meta`` carry the checksums of *their* files.
    DATASET_CLASS: type[CIFAR10]


def __getattr__(name: str) -> Any:
    # DATASET_CLASS is torchvision's CIFAR10 until someone sets it; importing torchvision only
    # when it is asked for keeps it out of processes that never read CIFAR-10 (~2 s each).
    if name == "DATASET_CLASS":
        from torchvision.datasets import CIFAR10

        return CIFAR10
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_cifar10(data_dir: str | None, *, train: bool, download: bool) -> ArrayDataset:
    """50,000 training or 10,000 test images as (N, 3, 32, 32) floats in [0, 1]."""
    dataset = open_torchvision(
        sys.modules[__name__].DATASET_CLASS,
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
