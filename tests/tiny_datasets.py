"""Tiny datasets written in the real on-disk formats, so the real loaders read them offline.

Images are learnable: each class lights up its own patch, plus noise, so a round of training
does better than chance.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5

NUM_CLASSES = 10


def class_images(
    labels: np.ndarray, height: int, width: int, channels: int, seed: int
) -> np.ndarray:
    """uint8 images (N, C, H, W): noise plus a bright patch whose place depends on the label."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), channels, height, width), dtype=np.uint8)
    patch = max(2, height // 5)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        top, left = row * (height // 3), col * (width // 4)
        images[index, :, top : top + patch, left : left + patch] = 250
    return images


def balanced_labels(count: int, seed: int) -> np.ndarray:
    """``count`` labels cycling through every class, shuffled."""
    return np.random.default_rng(seed).permutation(np.arange(count) % NUM_CLASSES).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: raw idx files, as torchvision reads them from <root>/<Class>/raw/


def _write_idx(path: Path, array: np.ndarray) -> None:
    # idx: two zero bytes, the type code (0x08: uint8), the number of dims, big-endian sizes.
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(
    root: Path, folder: str = "MNIST", train: int = 120, test: int = 40, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    Returns:
        ``{"train": (images (N, 28, 28), labels), "test": ...}`` as written.
    """
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    written = {}
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        labels = balanced_labels(count, seed + len(split))
        images = class_images(labels, 28, 28, 1, seed + count)[:, 0]
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[split] = (images, labels)
    return written


# ---------------------------------------------------------------------------------------------
# CIFAR-10: python pickle batches under <root>/cifar-10-batches-py/


def write_cifar10(
    root: Path, per_batch: int = 20, test: int = 40, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write five training batches, ``test_batch`` and ``batches.meta`` as CIFAR-10 ships them:
    each batch a pickled dict with ``data`` (N, 3072) uint8, rows of 1024 R, G then B values,
    and ``labels``.

    Returns:
        ``{"train": (images (N, 3, 32, 32), labels), "test": ...}`` as written.
    """
    base = root / CIFAR10.base_folder
    base.mkdir(parents=True)
    train_images, train_labels = [], []
    for batch in range(1, 6):
        labels = balanced_labels(per_batch, seed + batch)
        images = class_images(labels, 32, 32, 3, seed + 100 + batch)
        _pickle(base / f"data_batch_{batch}", images, labels)
        train_images.append(images)
        train_labels.append(labels)
    test_labels = balanced_labels(test, seed + 7)
    test_images = class_images(test_labels, 32, 32, 3, seed + 200)
    _pickle(base / "test_batch", test_images, test_labels)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (base / "batches.meta").write_bytes(pickle.dumps(meta))
    return {
        "train": (np.concatenate(train_images), np.concatenate(train_labels)),
        "test": (test_images, test_labels),
    }


def _pickle(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    batch = {"data": images.reshape(len(images), -1), "labels": [int(x) for x in labels]}
    path.write_bytes(pickle.dumps(batch))


def cifar10_with_checksums_of(root: Path) -> type[CIFAR10]:
    """A CIFAR10 subclass whose checksum lists name the MD5 sums of the files under ``root``.

    torchvision still verifies every file (against these sums) and parses them unchanged; only
    the expected sums differ from the published ones, which tiny files cannot match.
    """
    base = root / CIFAR10.base_folder

    def listed(files: list[list[str]]) -> list[list[str]]:
        return [[name, calculate_md5(str(base / name))] for name, _ in files]

    return type(
        "TinyCIFAR10",
        (CIFAR10,),
        {
            "train_list": listed(CIFAR10.train_list),
            "test_list": listed(CIFAR10.test_list),
            "meta": {**CIFAR10.meta, "md5": calculate_md5(str(base / CIFAR10.meta["filename"]))},
        },
    )


# ---------------------------------------------------------------------------------------------
# A local folder: ImageFolder of PNG files, or an .npz


def write_image_folder(
    directory: Path,
    classes: list[str],
    per_class: int,
    size: int = 12,
    seed: int = 0,
    grey: bool = True,
) -> None:
    """``directory/<class>/<n>.png`` for each class (class index = position in ``classes``
    within the image pattern, so the same name looks the same on every site)."""
    for name in classes:
        label = int(name.removeprefix("c")) if name.startswith("c") else 0
        images = class_images(np.full(per_class, label), size, size, 1, seed + label)
        (directory / name).mkdir(parents=True)
        for index, image in enumerate(images):
            mode_image = Image.fromarray(image[0])
            (mode_image if grey else mode_image.convert("RGB")).save(
                directory / name / f"{index}.png"
            )


def write_npz(
    path: Path, train: int, test: int | None = None, seed: int = 0, size: int = 12
) -> dict[str, np.ndarray]:
    """An .npz with ``x`` (N, H, W) uint8 and ``y``; with ``test``, also ``x_test``/``y_test``."""
    labels = balanced_labels(train, seed)
    arrays: dict[str, Any] = {
        "x": class_images(labels, size, size, 1, seed)[:, 0],
        "y": labels.astype(np.int64),
    }
    if test is not None:
        test_labels = balanced_labels(test, seed + 1)
        arrays["x_test"] = class_images(test_labels, size, size, 1, seed + 1)[:, 0]
        arrays["y_test"] = test_labels.astype(np.int64)
    np.savez(path, **arrays)
    return arrays
