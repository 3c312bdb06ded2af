"""The app bodies: plain functions that run on a site or on the aggregator.

Each is testable without Parsl; :func:`bind_apps` turns them into Parsl apps pinned to executors.
Apps exchange small dicts whose ``"weights"`` entry is a proxy (or, with ``transfer: direct``,
the arrays); never a bare proxy, which Parsl would mistake for code.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from parsl import python_app
from proxystore.store.config import StoreConfig

from proxyflox.checkpoints import read_checkpoint, write_checkpoint
from proxyflox.data import (
    TEST,
    TRAIN,
    ArrayDataset,
    DatasetInfo,
    dataset_info,
    load_folder,
    load_split,
)
from proxyflox.data.partition import partition
from proxyflox.errors import ConfigError
from proxyflox.models import build_model
from proxyflox.settings import ExperimentConfig, SiteOptions
from proxyflox.stores import enter_site, put_weights, resolve_weights
from proxyflox.strategies import Strategy, Update
from proxyflox.training import derive_seed, evaluate, train_local
from proxyflox.weights import load_weights, save_weights, weights_nbytes, weights_of

# Fixed stream ids for derive_seed, so each use of the seed draws independent numbers.
_PARTITION_STREAM, _INIT_STREAM, _SHUFFLE_STREAM = 1, 2, 3


def site_data(
    config: ExperimentConfig,
    site: int,
    num_sites: int,
    data_dir: str | None = None,
    *,
    split: str = TRAIN,
    info: DatasetInfo | None = None,
) -> ArrayDataset:
    """One site's samples, computed where the site runs (nothing is shipped to it).

    Args:
        config: The experiment.
        site: Site number.
        num_sites: Number of sites the data is split over.
        data_dir: This site's own ``data_dir`` (default: the experiment's).
        split: ``train``: its training samples; ``test``: its local test samples.
        info: The dataset facts that travel with the global model; with ``folder`` they map a
            site's class folders to the aggregator's label numbers.

    For the partitioned datasets this is the site's share of the split, partitioned from the
    seed (the test split by the same plan, so a site's local test set has the label mix of its
    training data). For ``folder`` it is the machine's own data, unpartitioned.
    ``samples_per_site`` caps training samples only.
    """
    return _site_data(
        config.dataset,
        data_dir or config.data_dir,
        config.download,
        config.seed,
        config.test_fraction,
        config.partition,
        config.alpha,
        config.classes_per_site,
        config.samples_per_site,
        num_sites,
        site,
        split,
        info,
    )


@functools.lru_cache(maxsize=8)
def _site_data(
    dataset: str,
    data_dir: str | None,
    download: bool,
    seed: int,
    test_fraction: float,
    scheme: str,
    alpha: float,
    classes_per_site: int,
    samples_per_site: int | None,
    num_sites: int,
    site: int,
    split: str,
    info: DatasetInfo | None,
) -> ArrayDataset:
    cap = samples_per_site if split == TRAIN else None
    what = "training samples" if split == TRAIN else "test samples (evaluate_sites)"
    if dataset == "folder":
        if data_dir is None:
            raise ConfigError(
                f"data_dir: dataset folder: site {site} has no data_dir; set data_dir, or "
                "site_options.LABEL.data_dir for its executor"
            )
        local = load_folder(data_dir, info.classes if info is not None else None)
        data = local.train if split == TRAIN else local.test
        if data is None:
            raise ConfigError(
                f"evaluate_sites: site {site}'s data at {data_dir} has no local test split "
                "(a test/ folder next to train/, or x_test and y_test in the .npz)"
            )
        if cap is None or cap >= len(data):
            return data
        rng = np.random.default_rng(derive_seed(seed, _PARTITION_STREAM, site))
        return data.subset(np.sort(rng.permutation(len(data))[:cap]))
    full = load_split(dataset, data_dir, split, seed, test_fraction, download)
    parts = partition(
        full.y,
        num_sites,
        scheme,
        seed=derive_seed(seed, _PARTITION_STREAM),
        alpha=alpha,
        classes_per_site=classes_per_site,
        samples_per_site=cap,
        num_classes=(info or dataset_info(dataset, data_dir)).num_classes,
        what=what,
    )
    return full.subset(parts[site])


def shuffle_seed(config: ExperimentConfig, round_number: int, site: int) -> int:
    """Seed of a site's batch order in one round."""
    return derive_seed(config.seed, _SHUFFLE_STREAM, round_number, site)


def new_model(config: ExperimentConfig, info: DatasetInfo | None = None) -> torch.nn.Module:
    """The model architecture of the experiment, randomly initialised from the run seed.

    Args:
        config: The experiment.
        info: Input shape and classes (default: the dataset's, read at the experiment's
            ``data_dir`` for ``folder``).
    """
    info = info or dataset_info(config.dataset, config.data_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, _INIT_STREAM))
        return build_model(
            config.model,
            info.input_shape,
            info.num_classes,
            depth=config.depth,
            width_multiplier=config.width_multiplier,
        )


def model_dataset(
    config: ExperimentConfig, global_model: Mapping[str, Any], data_dir: str | None
) -> DatasetInfo:
    """The dataset facts travelling with a global model, or (for a model dict without them)
    the dataset's own as seen from ``data_dir``."""
    info = global_model.get("dataset")
    return info if info is not None else dataset_info(config.dataset, data_dir or config.data_dir)


def init_global_model(
    config: ExperimentConfig,
    store_config: StoreConfig | None,
    options: SiteOptions | None = None,
    resume_from: str | None = None,
) -> dict[str, Any]:
    """Aggregator: build the initial global model (or read it, and the strategy state, from a
    checkpoint) and put it into the store.

    The result carries the dataset facts (input shape, classes; for ``folder`` those of the
    aggregator's data) under ``"dataset"``; every later global model passes them on, so sites
    build the same architecture and label classes the same way.
    """
    options = options or SiteOptions()
    enter_site(options)
    info = dataset_info(config.dataset, options.data_dir or config.data_dir)
    state: dict[str, Any] = {}
    if resume_from is None:
        weights = weights_of(new_model(config, info))
    else:
        weights, state = read_checkpoint(resume_from)
    ref, put_seconds = put_weights(weights, store_config)
    state_ref = put_weights(state, store_config)[0] if state else None
    return {
        "weights": ref,
        "state": {"weights": state_ref} if state_ref is not None else None,
        "dataset": info,
        "model_bytes": weights_nbytes(weights),
        "put_seconds": put_seconds,
    }


def train_site(
    config: ExperimentConfig,
    site: int,
    num_sites: int,
    round_number: int,
    global_model: Mapping[str, Any],
    store_config: StoreConfig | None,
    options: SiteOptions | None = None,
    instructions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Site: resolve the global model, train on the site's own data, put the update.

    ``options`` (this site's batch size, epochs, threads, device, data) override ``config``.
    ``instructions`` come from the strategy: ``proximal_mu`` (FedProx) and ``update_kind``
    (``weights``, default, or ``delta``: trained minus received, for FedBuff).

    Returns:
        ``{"weights": <ref to the update>, "num_samples", "train_loss", "resolve_seconds",
        "train_seconds", "put_seconds", "site", "host", "pid", "netns", "batch_job",
        "class_counts", "dataset"}``; every time is measured here. ``class_counts`` (samples
        per class) is what the run's ``partition.csv`` is made of.
    """
    options = options or SiteOptions()
    instructions = instructions or {}
    enter_site(options)
    torch.set_num_threads(options.torch_threads or config.torch_threads)
    info = model_dataset(config, global_model, options.data_dir)
    data = site_data(config, site, num_sites, options.data_dir, info=info)
    received, resolve_seconds = resolve_weights(global_model["weights"])
    model = new_model(config, info)
    load_weights(model, received)
    if instructions.get("update_kind", "weights") != "delta":
        del received
    start = time.perf_counter()
    epochs = options.local_epochs or config.local_epochs
    batch_size = options.batch_size or config.batch_size
    device = options.device or "cpu"
    train_loss = train_local(
        model,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=config.lr,
        momentum=config.momentum,
        shuffle_seed=shuffle_seed(config, round_number, site),
        device=device,
        proximal_mu=float(instructions.get("proximal_mu", 0.0)),
    )
    train_seconds = time.perf_counter() - start
    update = weights_of(model)
    if instructions.get("update_kind") == "delta":
        update = {name: array - received[name] for name, array in update.items()}
        del received
    ref, put_seconds = put_weights(update, store_config)
    del update
    return {
        "weights": ref,
        "site": site,
        "num_samples": len(data),
        "class_counts": np.bincount(data.y, minlength=info.num_classes).tolist(),
        "dataset": info,
        "train_loss": train_loss,
        "resolve_seconds": resolve_seconds,
        "train_seconds": train_seconds,
        "put_seconds": put_seconds,
        "local_epochs": epochs,
        "batch_size": batch_size,
        "device": device,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "netns": _network_namespace(),
        "batch_job": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID", ""),
    }


def _network_namespace() -> str:
    """This process's network namespace (``net:[4026531840]``), telling apart sites that share a
    host name (containers, namespaces); empty where ``/proc`` has no such entry."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def aggregate_updates(
    strategy: Strategy,
    global_model: Mapping[str, Any],
    *train_results: Mapping[str, Any],
    staleness: Sequence[int] = (),
    state: Mapping[str, Any] | None = None,
    store_config: StoreConfig | None,
    save_path: str | None = None,
    checkpoint_dir: str | None = None,
    options: SiteOptions | None = None,
) -> dict[str, Any]:
    """Aggregator: the strategy's new global model from the sites' updates, resolving one
    update at a time.

    Args:
        strategy: The server rule (its hyperparameters; its state comes in ``state``).
        global_model: The current global model (resolved only if the strategy needs it).
        train_results: The train apps' results.
        staleness: Per result, the global versions published since its site's model was sent.
        state: The previous aggregation's ``{"weights": <ref to the strategy state>}``, if any.
        store_config: Where to put the new global model (``None``: return it directly).
        save_path: Also write the new global model there (the final ``model.pt``).
        checkpoint_dir: Also write the new global model and state there (a checkpoint).
        options: The aggregator's options.

    Returns:
        ``{"weights", "state", "dataset", "model_bytes", "num_updates", "aggregate_seconds",
        "resolve_seconds", "put_seconds", "checkpoint_seconds"}``; ``state`` is ``None`` or
        ``{"weights": <ref>}``.
    """
    enter_site(options or SiteOptions())
    resolve_seconds = 0.0

    def fetch(ref: Any) -> Any:
        nonlocal resolve_seconds
        value, seconds = resolve_weights(ref)
        resolve_seconds += seconds
        return value

    def updates() -> Iterator[Update]:
        for index, result in enumerate(train_results):
            yield Update(
                fetch(result["weights"]),
                int(result["num_samples"]),
                staleness[index] if staleness else 0,
            )

    current = fetch(global_model["weights"]) if strategy.uses_global_model else {}
    previous_state = fetch(state["weights"]) if state else strategy.initial_state()
    start = time.perf_counter()
    total = sum(int(result["num_samples"]) for result in train_results)
    new_global, new_state = strategy.aggregate_train(current, updates(), total, previous_state)
    aggregate_seconds = time.perf_counter() - start - resolve_seconds
    del current, previous_state
    if save_path is not None:
        save_weights(new_global, save_path)
    checkpoint_start = time.perf_counter()
    if checkpoint_dir is not None:
        write_checkpoint(checkpoint_dir, new_global, new_state)
    checkpoint_seconds = time.perf_counter() - checkpoint_start
    ref, put_seconds = put_weights(new_global, store_config)
    state_ref = None
    if new_state:
        state_ref, state_put_seconds = put_weights(new_state, store_config)
        put_seconds += state_put_seconds
    return {
        "weights": ref,
        "state": {"weights": state_ref} if state_ref is not None else None,
        "dataset": global_model.get("dataset"),  # passed on to the next round's sites
        "model_bytes": weights_nbytes(new_global),
        "num_updates": len(train_results),
        "aggregate_seconds": aggregate_seconds,
        "resolve_seconds": resolve_seconds,
        "put_seconds": put_seconds,
        "checkpoint_seconds": checkpoint_seconds,
    }


def evaluate_global(
    config: ExperimentConfig,
    global_model: Mapping[str, Any],
    options: SiteOptions | None = None,
) -> dict[str, Any]:
    """Aggregator: accuracy and loss of the global model on the global test set."""
    options = options or SiteOptions()
    data_dir = options.data_dir or config.data_dir
    test = load_split(
        config.dataset, data_dir, TEST, config.seed, config.test_fraction, config.download
    )
    return _evaluate(
        config, global_model, model_dataset(config, global_model, data_dir), test, options
    )


def evaluate_site(
    config: ExperimentConfig,
    site: int,
    num_sites: int,
    global_model: Mapping[str, Any],
    options: SiteOptions | None = None,
) -> dict[str, Any]:
    """Site: accuracy and loss of the global model on the site's own local test data
    (``evaluate_sites: true``); the data never leaves the site.

    Returns:
        ``{"site", "accuracy", "loss", "num_samples", "class_counts", "evaluate_seconds",
        "resolve_seconds"}``.
    """
    options = options or SiteOptions()
    info = model_dataset(config, global_model, options.data_dir)
    data = site_data(config, site, num_sites, options.data_dir, split=TEST, info=info)
    return {
        "site": site,
        "num_samples": len(data),
        "class_counts": np.bincount(data.y, minlength=info.num_classes).tolist(),
    } | _evaluate(config, global_model, info, data, options)


def _evaluate(
    config: ExperimentConfig,
    global_model: Mapping[str, Any],
    info: DatasetInfo,
    data: ArrayDataset,
    options: SiteOptions,
) -> dict[str, Any]:
    """Resolve the global model and measure it on ``data`` where this app runs."""
    enter_site(options)
    torch.set_num_threads(options.torch_threads or config.torch_threads)
    weights, resolve_seconds = resolve_weights(global_model["weights"])
    model = new_model(config, info)
    load_weights(model, weights)
    del weights
    start = time.perf_counter()
    accuracy, loss = evaluate(model, data, device=options.device or "cpu")
    return {
        "accuracy": accuracy,
        "loss": loss,
        "evaluate_seconds": time.perf_counter() - start,
        "resolve_seconds": resolve_seconds,
    }


@dataclass(frozen=True)
class FederationApps:
    """The app bodies bound as Parsl apps: one train app per site executor, the rest on the
    aggregator's executor (pinned at decoration time, as Parsl wants)."""

    init: Callable[..., Any]
    train: Mapping[str, Callable[..., Any]]
    aggregate: Callable[..., Any]
    evaluate: Callable[..., Any]
    #: Per site executor: local evaluation of the global model (``evaluate_sites: true``).
    evaluate_site: Mapping[str, Callable[..., Any]]


def bind_apps(
    site_labels: list[str],
    aggregator_label: str,
    *,
    train: Callable[..., Any] = train_site,
    aggregate: Callable[..., Any] = aggregate_updates,
    evaluate: Callable[..., Any] = evaluate_global,
) -> FederationApps:
    """Wrap the app bodies with ``python_app`` for the given executor labels.

    ``train``, ``aggregate`` and ``evaluate`` replace a body with one of the same signature
    (e.g. the benchmarks' timed wrappers).
    """
    on_aggregator = [aggregator_label]
    return FederationApps(
        init=python_app(init_global_model, executors=on_aggregator),
        train={label: python_app(train, executors=[label]) for label in site_labels},
        aggregate=python_app(aggregate, executors=on_aggregator),
        evaluate=python_app(evaluate, executors=on_aggregator),
        evaluate_site={
            label: python_app(evaluate_site, executors=[label]) for label in site_labels
        },
    )
