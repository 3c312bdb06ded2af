"""In-memory datasets as numpy arrays, and what every loader shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from proxyflox.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs ``x`` (N, C, H, W) float32 and integer labels ``y`` (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The samples at ``indices``, in that order."""
        return ArrayDataset(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class DatasetInfo:
    """What building a model needs to know about a dataset.

    It travels with the global model (a few bytes), so a site builds the same architecture as
    the aggregator without any data of its own being needed for that.
    """

    #: (C, H, W) of one input.
    input_shape: tuple[int, ...]
    num_classes: int
    #: Class names in label order, where the data names them (``folder``); else ``None``.
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DatasetSplits:
    """Both splits of a dataset and its classes (what :func:`proxyflox.data.load_dataset` gives)."""

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    classes: tuple[str, ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one input."""
        return tuple(self.train.x.shape[1:])


#: (data_dir, train, seed, test_fraction, download) -> one split of a dataset, whole.
SplitLoader = Callable[[str | None, bool, int, float, bool], ArrayDataset]


@dataclass(frozen=True)
class Dataset:
    """An entry of the dataset registry: how to read a dataset, and what is known beforehand."""

    #: (data_dir) -> input shape and classes; the built-in datasets know them without reading.
    info: Callable[[str | None], DatasetInfo]
    load: SplitLoader
    #: (test_fraction) -> training samples, where known without reading any file.
    train_size: Callable[[float], int | None] = lambda test_fraction: None
    #: Read from ``data_dir``, which every machine that reads the dataset then needs.
    reads_data_dir: bool = True
    #: Each machine's own data, not partitioned: a site per site executor.
    local: bool = False


def torchvision_dataset(
    load: Callable[..., ArrayDataset], info: DatasetInfo, train_size: int
) -> Dataset:
    """The registry entry of a dataset torchvision reads from ``data_dir``.

    Args:
        load: ``load(data_dir, *, train, download)``.
        info: Input shape and classes.
        train_size: Samples in the official training split.
    """
    return Dataset(
        info=lambda data_dir: info,
        load=lambda data_dir, train, seed, test_fraction, download: load(
            data_dir, train=train, download=download
        ),
        train_size=lambda test_fraction: train_size,
    )


def images_to_array(images: np.ndarray, *, channels_last: bool = False) -> np.ndarray:
    """Images as float32 (N, C, H, W) in [0, 1].

    Args:
        images: uint8 (N, H, W), (N, C, H, W), or (N, H, W, C) with ``channels_last``.
        channels_last: Whether 4-dimensional ``images`` hold their channels last.
    """
    if images.ndim == 3:
        images = images[:, None, :, :]
    elif channels_last:
        images = images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0)


def open_torchvision(
    dataset_class: type[T],
    name: str,
    data_dir: str | None,
    *,
    train: bool,
    download: bool,
    expected: str,
) -> T:
    """Open a torchvision dataset under ``data_dir``, downloading it there first if asked.

    torchvision's own checks run unchanged (file presence, and checksums where it has them).

    Args:
        dataset_class: e.g. ``torchvision.datasets.MNIST``.
        name: The dataset's name in the settings, for messages.
        data_dir: The root directory torchvision reads (and downloads into).
        train: The training split, else the test split.
        download: Fetch the files first (needs internet; a no-op when they are present).
        expected: The files torchvision looks for, relative to ``data_dir``, for messages.

    Raises:
        ConfigError: ``data_dir`` is not set, or holds no valid copy and ``download`` is off.
        RuntimeError: the download failed.
    """
    if data_dir is None:
        raise ConfigError(
            f"data_dir: dataset {name} is read from data_dir, which is not set; "
            f"set data_dir (or site_options.LABEL.data_dir) to a directory holding {expected}"
        )
    root = Path(data_dir).expanduser()
    constructor: Any = dataset_class
    try:
        return constructor(str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:
        # torchvision's first sentence says what is wrong; the rest is advice given below.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        if download:
            raise RuntimeError(f"dataset {name}: download into {root} failed: {reason}") from err
        if isinstance(err, OSError):
            raise  # e.g. unreadable files: not a missing dataset
        raise ConfigError(
            f"data_dir: no valid {name} data in {root} ({reason}); torchvision reads "
            f"{expected} there; copy the files in, or set download: true where the machine "
            "is online"
        ) from None
