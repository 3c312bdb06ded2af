"""Datasets by name, read by the real loaders from tiny files in the real formats (never
downloaded), and one round of federated training on each with parsl_configs/local.py."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10

from proxyflox.apps import site_data
from proxyflox.controller import RunResult
from proxyflox.controller.planner import data_spec
from proxyflox.data import cifar10, dataset_info, load_folder, load_split
from proxyflox.errors import ConfigError
from proxyflox.results import read_partition, read_rounds
from proxyflox.settings import load_experiment
from tests.helpers import DEFAULT_EXPERIMENT, run_cli
from tests.tiny_datasets import (
    cifar10_with_checksums_of,
    write_cifar10,
    write_image_folder,
    write_mnist,
    write_npz,
)

Runner = Callable[..., RunResult]


# ---------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_family_reads_raw_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    written = write_mnist(tmp_path, folder, train=30, test=20)
    for split in ("train", "test"):
        data = load_split(name, str(tmp_path), split, 0, 0.2)
        images, labels = written[split]
        assert data.x.shape == (len(labels), 1, 28, 28)
        assert data.x.dtype == np.float32
        assert np.array_equal(data.x[:, 0] * 255, images.astype(np.float32))
        assert np.array_equal(data.y, labels)
    assert dataset_info(name, None).input_shape == data.x.shape[1:]


def test_cifar10_reads_pickle_batches_and_verifies_their_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_cifar10(tmp_path, per_batch=8, test=10)
    # The real path: torchvision's published MD5 sums, which tiny files cannot match.
    assert cifar10.DATASET_CLASS is CIFAR10
    with pytest.raises(ConfigError, match=r"no valid cifar10 data .* not found or corrupted"):
        load_split("cifar10", str(tmp_path), "train", 0, 0.2)
    # The same torchvision code, checking against the sums of the files just written.
    monkeypatch.setattr(cifar10, "DATASET_CLASS", cifar10_with_checksums_of(tmp_path))
    for split in ("train", "test"):
        data = load_split("cifar10", str(tmp_path), split, 0, 0.2)
        images, labels = written[split]
        assert data.x.shape == (len(labels), 3, 32, 32)
        assert np.array_equal(data.x * 255, images.astype(np.float32))  # channel order kept
        assert np.array_equal(data.y, labels)
    # A corrupted batch is caught by the checksum even with the matching class.
    batch = tmp_path / CIFAR10.base_folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\0")
    with pytest.raises(ConfigError, match="not found or corrupted"):
        # Seed 1: another cache key, so the files are read (and checked) again.
        load_split("cifar10", str(tmp_path), "test", 1, 0.2)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_torchvision_datasets_without_files_say_where_they_look(tmp_path: Path, name: str) -> None:
    with pytest.raises(
        ConfigError, match=r"data_dir: dataset .* is read from data_dir, which is not"
    ):
        load_split(name, None, "train", 0, 0.2)
    with pytest.raises(ConfigError) as caught:
        load_split(name, str(tmp_path), "train", 0, 0.2)
    message = str(caught.value)
    assert f"no valid {name} data in {tmp_path}" in message
    assert "download: true" in message
    assert "\n" not in message


def test_an_image_folder_with_a_local_split(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "train", ["c0", "c1", "c2"], per_class=4)
    write_image_folder(tmp_path / "test", ["c0", "c1", "c2"], per_class=2)
    local = load_folder(str(tmp_path))
    assert local.classes == ("c0", "c1", "c2")
    assert local.train.x.shape == (12, 3, 12, 12)  # read as RGB
    assert local.test is not None
    assert np.bincount(local.test.y).tolist() == [2, 2, 2]
    assert local.train.x.min() >= 0.0
    assert local.train.x.max() == pytest.approx(250 / 255)
    # On the aggregator, the global test set is the local test split.
    assert len(load_split("folder", str(tmp_path), "test", 0, 0.2)) == 6


def test_a_site_holding_some_classes_labels_them_as_the_aggregator_does(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "aggregator", ["c0", "c1", "c2", "c3"], per_class=1)
    write_image_folder(tmp_path / "site", ["c1", "c3"], per_class=2)
    classes = dataset_info("folder", str(tmp_path / "aggregator")).classes
    assert classes == ("c0", "c1", "c2", "c3")
    # Alone, the site's folders would be labels 0 and 1; through the aggregator's list, 1 and 3.
    assert load_folder(str(tmp_path / "site"), classes).train.y.tolist() == [1, 1, 3, 3]
    with pytest.raises(ConfigError, match=r"class folder.* c3 that the aggregator's data does not"):
        load_folder(str(tmp_path / "site"), ("c0", "c1"))


def test_folder_data_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_folder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no class folders"):
        load_folder(str(tmp_path / "empty"))
    write_image_folder(tmp_path / "mixed", ["c0"], per_class=2, size=12)
    write_image_folder(tmp_path / "other", ["c1"], per_class=1, size=16)
    (tmp_path / "other" / "c1").rename(tmp_path / "mixed" / "c1")
    with pytest.raises(ConfigError, match="differ in size"):
        load_folder(str(tmp_path / "mixed"))
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array([0, 1, 5]))
    with pytest.raises(ConfigError, match="y has label 5 but there are only 2 classes"):
        load_folder(str(tmp_path / "bad.npz"), ("a", "b"))
    with pytest.raises(ConfigError, match="dataset folder reads each machine's own data_dir"):
        dataset_info("folder", None)


def test_an_npz_with_a_local_split(tmp_path: Path) -> None:
    written = write_npz(tmp_path / "site.npz", train=30, test=10)
    local = load_folder(str(tmp_path / "site.npz"))
    assert local.train.x.shape == (30, 1, 12, 12)
    assert np.array_equal(local.train.x[:, 0] * 255, written["x"].astype(np.float32))
    assert local.test is not None
    assert np.array_equal(local.test.y, written["y_test"])
    assert local.classes == tuple(str(c) for c in range(10))


def test_sites_partition_the_dataset_and_their_local_test_sets_follow_their_label_mix() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"partition": "shards", "classes_per_site": "3"})
    for site in range(4):
        train = site_data(data_spec(config, 4), site)
        test = site_data(data_spec(config, 4), site, split="test")
        assert len(np.unique(train.y)) == 3
        assert set(np.unique(test.y)) == set(np.unique(train.y))


def test_samples_per_site_caps_each_sites_data() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"samples_per_site": "50"})
    sizes = [len(site_data(data_spec(config, 4), site)) for site in range(4)]
    assert sizes == [50] * 4
    # The local test sets are not capped.
    assert len(site_data(data_spec(config, 4), 0, split="test")) == 90


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "cifar"}, "dataset: unknown value 'cifar' (did you mean 'cifar10'?)"),
        ({"partition": "shard"}, "allowed: iid, dirichlet, shards"),
        ({"classes_per_site": "0"}, "classes_per_site: must be at least 1, got 0"),
        ({"samples_per_site": "0"}, "samples_per_site: must be at least 1, got 0"),
        ({"download": "maybe"}, "download: must be true or false, got 'maybe'"),
        ({"evaluate_sites": "2"}, "evaluate_sites: must be true or false"),
    ],
)
def test_bad_data_settings_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(DEFAULT_EXPERIMENT, overrides)
    assert message in str(caught.value)


def test_shards_that_leave_classes_out_or_ask_for_too_many_are_errors() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"partition": "shards", "classes_per_site": "11"})
    with pytest.raises(ConfigError, match="classes_per_site: must be between 1 and the dataset's"):
        site_data(data_spec(config, 4), 0)
    config = load_experiment(DEFAULT_EXPERIMENT, {"partition": "shards", "classes_per_site": "2"})
    with pytest.raises(ConfigError, match="holds only 4 of the 10 classes"):
        site_data(data_spec(config, 2), 0)


# ---------------------------------------------------------------------------------------------
# One round of federated training on each dataset (parsl_configs/local.py: threads)


def _partition_totals(run_dir: Path, split: str = "train") -> list[int]:
    return [int(row["samples"]) for row in read_partition(run_dir) if row["split"] == split]


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_a_round_on_the_mnist_family(
    run_local: Runner, tmp_path: Path, name: str, folder: str
) -> None:
    write_mnist(tmp_path / "data", folder, train=80, test=40)
    result = run_local(
        rounds=1, dataset=name, data_dir=str(tmp_path / "data"), evaluate_sites="true"
    )
    (row,) = read_rounds(result.run_dir)
    assert 0.0 <= float(row["accuracy"]) <= 1.0
    assert float(row["loss"]) > 0
    # Each site counted its share: 80 training and 40 test images over 4 sites, IID.
    assert _partition_totals(result.run_dir) == [20] * 4
    assert _partition_totals(result.run_dir, "test") == [10] * 4
    assert all(0.0 <= float(row[f"site{site}_accuracy"]) <= 1.0 for site in range(4))


def test_a_mobilenet_round_on_cifar10_from_a_local_data_dir(
    run_local: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar10(tmp_path / "data", per_batch=16, test=20)
    monkeypatch.setattr(cifar10, "DATASET_CLASS", cifar10_with_checksums_of(tmp_path / "data"))
    result = run_local(
        rounds=2,
        dataset="cifar10",
        data_dir=str(tmp_path / "data"),
        model="mobilenet",
        width_multiplier="0.25",
        partition="dirichlet",
        alpha="1.0",
        batch_size="8",
        lr="0.05",
    )
    rows = read_rounds(result.run_dir)
    assert len(rows) == 2
    assert all(np.isfinite(float(row["loss"])) for row in rows)
    assert sum(_partition_totals(result.run_dir)) == 80
    # BatchNorm's running statistics and counters travel and average with the weights.
    assert int(rows[0]["model_bytes"]) > 800_000


def test_folder_each_site_trains_on_its_own_directory(run_local: Runner, tmp_path: Path) -> None:
    site_classes = [["c0", "c1", "c2"], ["c3", "c4"], ["c5", "c6", "c7"], ["c8", "c9"]]
    overrides = {}
    for site, classes in enumerate(site_classes):
        write_image_folder(tmp_path / f"site{site}" / "train", classes, per_class=3, seed=site)
        write_image_folder(tmp_path / f"site{site}" / "test", classes, per_class=1, seed=9)
        overrides[f"site_options.site-{site}.data_dir"] = str(tmp_path / f"site{site}")
    aggregator = tmp_path / "aggregator"
    write_image_folder(aggregator, [f"c{c}" for c in range(10)], per_class=2, seed=5)
    overrides["site_options.aggregator.data_dir"] = str(aggregator)
    result = run_local(rounds=1, dataset="folder", evaluate_sites="true", **overrides)

    # partition.csv: exactly the classes and counts each site has on its own disk.
    for row in read_partition(result.run_dir):
        classes = site_classes[int(row["site"])]
        per_class = 3 if row["split"] == "train" else 1
        expected = [per_class if f"c{c}" in classes else 0 for c in range(10)]
        assert [int(row[f"class_{c}"]) for c in range(10)] == expected, row
    with open(result.run_dir / "sites.csv", newline="") as file:
        samples = {row["site"]: int(row["num_samples"]) for row in csv.DictReader(file)}
    assert samples == {"0": 9, "1": 6, "2": 9, "3": 6}
    (row,) = read_rounds(result.run_dir)
    assert 0.0 <= float(row["accuracy"]) <= 1.0  # on the aggregator's 20 images
    assert all(f"site{site}_accuracy" in row for site in range(4))


def test_folder_with_npz_files_and_a_shared_path(run_local: Runner, tmp_path: Path) -> None:
    # The same path on every machine (here: one machine), e.g. /data on each Pi.
    write_npz(tmp_path / "local.npz", train=24, test=8)
    result = run_local(rounds=1, dataset="folder", data_dir=str(tmp_path / "local.npz"))
    assert _partition_totals(result.run_dir) == [24] * 4


def test_folder_needs_one_site_executor_per_site(run_local: Runner, tmp_path: Path) -> None:
    write_npz(tmp_path / "local.npz", train=24)
    with pytest.raises(ConfigError, match="dataset folder needs one site executor per site"):
        run_local(rounds=1, dataset="folder", data_dir=str(tmp_path / "local.npz"), sites="5")


def test_folder_local_evaluation_needs_a_local_test_split(
    run_local: Runner, tmp_path: Path
) -> None:
    write_npz(tmp_path / "local.npz", train=24)
    with pytest.raises(ConfigError, match="has no local test split"):
        run_local(
            rounds=1,
            dataset="folder",
            data_dir=str(tmp_path / "local.npz"),
            evaluate_sites="true",
        )


def test_data_settings_are_checked_before_a_run_directory_exists(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    no_dir = run_cli("--dataset", "mnist", "--runs_dir", str(runs), cwd=tmp_path)
    assert no_dir.returncode == 2
    assert "data_dir: dataset mnist is read from data_dir, which is not set" in no_dir.stderr
    # With a data_dir for every machine but the aggregator, the aggregator is named.
    write_npz(tmp_path / "site.npz", train=8)
    options = [
        item
        for site in range(4)
        for item in (f"--site_options.site-{site}.data_dir", str(tmp_path / "site.npz"))
    ]
    no_test_set = run_cli("--dataset", "folder", "--runs_dir", str(runs), *options, cwd=tmp_path)
    assert no_test_set.returncode == 2
    assert "not set for executor(s) aggregator" in no_test_set.stderr
    assert not runs.exists()
