"""Fashion-MNIST through torchvision: MNIST's format under ``data_dir/FashionMNIST/raw/``."""

from __future__ import annotations

from proxyflox.data.base import ArrayDataset, DatasetInfo, torchvision_dataset
from proxyflox.data.mnist import load_mnist_family

INFO = DatasetInfo(input_shape=(1, 28, 28), num_classes=10)


def load_fashion_mnist(data_dir: str | None, *, train: bool, download: bool) -> ArrayDataset:
    """60,000 training or 10,000 test images of clothing as (N, 1, 28, 28) floats in [0, 1]."""
    from torchvision.datasets import FashionMNIST  # torchvision loads where the data is read

    return load_mnist_family(
        FashionMNIST, "fashion_mnist", data_dir, train=train, download=download
    )


DATASET = torchvision_dataset(load_fashion_mnist, INFO, train_size=60_000)
