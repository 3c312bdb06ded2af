"""MNIST through torchvision: the raw idx files under ``data_dir/MNIST/raw/``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from proxyflox.data.base import (
    ArrayDataset,
    DatasetInfo,
    images_to_array,
    open_torchvision,
    torchvision_dataset,
)

if TYPE_CHECKING:
    from torchvision.datasets import MNIST

INFO = DatasetInfo(input_shape=(1, 28, 28), num_classes=10)


def load_mnist(data_dir: str | None, *, train: bool, download: bool) -> ArrayDataset:
    """60,000 training or 10,000 test images as (N, 1, 28, 28) floats in [0, 1]."""
    from torchvision.datasets import MNIST  # torchvision loads where the dataset is read

    return load_mnist_family(MNIST, "mnist", data_dir, train=train, download=download)


def load_mnist_family(
    dataset_class: type[MNIST], name: str, data_dir: str | None, *, train: bool, download: bool
) -> ArrayDataset:
    """Any dataset in MNIST's format (MNIST, Fashion-MNIST): torchvision parses the idx files."""
    folder = dataset_class.__name__  # torchvision's raw folder is named after the class
    dataset = open_torchvision(
        dataset_class,
        name,
        data_dir,
        train=train,
        download=download,
        expected=f"{folder}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte",
    )
    return ArrayDataset(
        images_to_array(dataset.data.numpy()), dataset.targets.numpy().astype(np.int64)
    )


DATASET = torchvision_dataset(load_mnist, INFO, train_size=60_000)
