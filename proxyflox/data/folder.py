"""A site's own data on its own disk: an ImageFolder-style directory or an ``.npz`` file.

Accepted layouts of the path:

- ``DIR/<class>/<image>``: every image is training data (on the aggregator: the test set);
- ``DIR/train/<class>/<image>`` and optionally ``DIR/test/<class>/<image>``: a local split;
- ``FILE.npz`` with ``x`` (N, H, W) or (N, C, H, W) and integer labels ``y``; optionally
  ``x_test``/``y_test`` (a local split) and ``classes`` (class names in label order).

Images are read with torchvision's ``ImageFolder`` (any format PIL reads, converted to RGB) and
must all have one size. uint8 pixels are scaled to [0, 1]; float arrays are taken as they are.

Label numbers must mean the same on every site. The aggregator's copy defines them (for
directories: its class folder names, sorted), and sites map their folder names through that
list, so a site may hold only some of the classes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proxyflox.data.base import ArrayDataset, Dataset, DatasetInfo, images_to_array
from proxyflox.errors import ConfigError


@dataclass(frozen=True)
class LocalData:
    """One machine's data: training samples, an optional local test split, the class names."""

    train: ArrayDataset
    test: ArrayDataset | None
    classes: tuple[str, ...]

    @property
    def info(self) -> DatasetInfo:
        """What building a model needs to know about this data."""
        return DatasetInfo(tuple(self.train.x.shape[1:]), len(self.classes), self.classes)


@functools.lru_cache(maxsize=8)
def load_folder(path: str, classes: tuple[str, ...] | None = None) -> LocalData:
    """Read a local dataset (layouts in the module docstring).

    Cached per process: a warm worker reads its files once per run.

    Args:
        path: Directory or ``.npz`` file.
        classes: Class names in label order, as the aggregator's copy defines them; ``None``
            makes this copy define them.

    Raises:
        ConfigError: a missing path, an unknown layout, a class not in ``classes``, images of
            different sizes, labels out of range.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(
            f"data_dir: {path} does not exist (dataset folder reads an image directory or an "
            ".npz file there)"
        )
    if root.is_file():
        if root.suffix != ".npz":
            raise ConfigError(f"data_dir: {path} is a file but not an .npz archive")
        return _load_npz(root, classes)
    train_dir, test_dir = root / "train", root / "test"
    split = train_dir.is_dir()
    parts = [train_dir, test_dir] if split else [root]
    if classes is None:
        found: set[str] = set()
        for part in parts:
            if part.is_dir():
                found.update(_class_folders(part))
        classes = tuple(sorted(found))
    train = _load_images(parts[0], classes)
    test = _load_images(test_dir, classes) if split and test_dir.is_dir() else None
    if test is not None and test.x.shape[1:] != train.x.shape[1:]:
        raise ConfigError(
            f"data_dir: images in {train_dir} are {_size(train)} but in {test_dir} {_size(test)}"
        )
    return LocalData(train, test, classes)


def _class_folders(directory: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes  # loads where folders are read

    try:
        names, _ = find_classes(directory)
    except FileNotFoundError:
        raise ConfigError(
            f"data_dir: {directory} has no class folders (expected {directory}/<class>/<image>)"
        ) from None
    return names


@functools.cache
def _known_classes_folder() -> type[Any]:
    """ImageFolder numbering classes by a given list instead of by the folders it finds.

    A site with only some of the classes thus still labels them as everyone else does. Built
    on first use: torchvision loads only where a folder is read.
    """
    from torchvision.datasets import ImageFolder

    class KnownClassesFolder(ImageFolder):
        def __init__(self, root: Path, classes: tuple[str, ...]) -> None:
            self._known = classes  # read by find_classes, which the base __init__ calls
            super().__init__(str(root), allow_empty=True)

        def find_classes(self, directory: Any) -> tuple[list[str], dict[str, int]]:
            unknown = sorted(set(_class_folders(Path(directory))) - set(self._known))
            if unknown:
                raise ConfigError(
                    f"data_dir: {directory} has class folder(s) {', '.join(unknown)} that the "
                    f"aggregator's data does not have; known: {', '.join(self._known)}"
                )
            return list(self._known), {name: label for label, name in enumerate(self._known)}

    return KnownClassesFolder


def _load_images(directory: Path, classes: tuple[str, ...]) -> ArrayDataset:
    folder = _known_classes_folder()(directory, classes)
    if not folder.samples:
        raise ConfigError(f"data_dir: {directory} holds no images")
    images = [np.asarray(folder.loader(path)) for path, _ in folder.samples]
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        shown = ", ".join("x".join(map(str, s[:2])) for s in sorted(sizes)[:3])
        raise ConfigError(f"data_dir: images in {directory} differ in size ({shown}); use one size")
    return ArrayDataset(
        images_to_array(np.stack(images), channels_last=True),
        np.asarray(folder.targets, dtype=np.int64),
    )


def _size(data: ArrayDataset) -> str:
    channels, height, width = data.x.shape[1:]
    return f"{channels}x{height}x{width}"


def _load_npz(path: Path, classes: tuple[str, ...] | None) -> LocalData:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for key in ("x", "y"):
        if key not in arrays:
            raise ConfigError(f"data_dir: {path} has no array {key!r} (found: {sorted(arrays)})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ConfigError(f"data_dir: {path} needs both x_test and y_test, or neither")
    own = tuple(str(name) for name in arrays["classes"]) if "classes" in arrays else None
    if classes is not None and own is not None and own != classes:
        raise ConfigError(
            f"data_dir: {path} names classes {', '.join(own)} but the aggregator's data names "
            f"{', '.join(classes)}"
        )
    train = _npz_split(path, arrays["x"], arrays["y"], "x", "y")
    test = None
    if "x_test" in arrays:
        test = _npz_split(path, arrays["x_test"], arrays["y_test"], "x_test", "y_test")
        if test.x.shape[1:] != train.x.shape[1:]:
            raise ConfigError(
                f"data_dir: {path}: x is {_size(train)} per sample, x_test {_size(test)}"
            )
    if classes is None:
        labels = [train.y] if test is None else [train.y, test.y]
        classes = own or tuple(str(i) for i in range(int(max(y.max() for y in labels)) + 1))
    for data, key in ((train, "y"), (test, "y_test")):
        if data is not None and data.y.max() >= len(classes):
            raise ConfigError(
                f"data_dir: {path}: {key} has label {int(data.y.max())} but there are only "
                f"{len(classes)} classes"
            )
    return LocalData(train, test, classes)


def _npz_split(path: Path, x: np.ndarray, y: np.ndarray, x_key: str, y_key: str) -> ArrayDataset:
    if x.ndim not in (3, 4):
        raise ConfigError(
            f"data_dir: {path}: {x_key} must be (N, H, W) or (N, C, H, W), got shape {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(
            f"data_dir: {path}: {y_key} must be {len(x)} integer labels, got {y.dtype} {y.shape}"
        )
    if len(y) == 0:
        raise ConfigError(f"data_dir: {path}: {x_key} holds no samples")
    if y.min() < 0:
        raise ConfigError(f"data_dir: {path}: {y_key} has a negative label {int(y.min())}")
    if x.dtype == np.uint8:
        inputs = images_to_array(x)
    else:
        inputs = np.ascontiguousarray(x if x.ndim == 4 else x[:, None], dtype=np.float32)
    return ArrayDataset(inputs, y.astype(np.int64))


def _folder_path(data_dir: str | None) -> str:
    if data_dir is None:
        raise ConfigError(
            "data_dir: dataset folder reads each machine's own data_dir, which is not set; set "
            "data_dir, or site_options.LABEL.data_dir per executor (the aggregator's holds the "
            "global test set)"
        )
    return data_dir


def _load_split(
    data_dir: str | None, train: bool, seed: int, test_fraction: float, download: bool
) -> ArrayDataset:
    """The training data, or the local test split (all of the data when there is none)."""
    local = load_folder(_folder_path(data_dir))
    return local.train if train or local.test is None else local.test


DATASET = Dataset(
    info=lambda data_dir: load_folder(_folder_path(data_dir)).info, load=_load_split, local=True
)
