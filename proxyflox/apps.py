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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from parsl import python_app
from proxystore.store.config import StoreConfig

from proxyflox.config import ExperimentConfig, SiteOptions
from proxyflox.data import ArrayDataset, load_dataset
from proxyflox.data.partition import partition
from proxyflox.models import build_model
from proxyflox.stores import put_weights, resolve_weights
from proxyflox.strategies import FedAvg
from proxyflox.training import derive_seed, evaluate, train_local
from proxyflox.weights import Weights, load_weights, save_weights, weights_nbytes, weights_of

# Fixed stream ids for derive_seed, so each use of the seed draws independent numbers.
_PARTITION_STREAM, _INIT_STREAM, _SHUFFLE_STREAM = 1, 2, 3


def site_data(
    config: ExperimentConfig, site: int, num_sites: int, data_dir: str | None = None
) -> ArrayDataset:
    """The training samples of one site: its partition of the dataset's training split."""
    return _site_data(
        config.dataset,
        data_dir or config.data_dir,
        config.seed,
        config.test_fraction,
        config.partition,
        config.alpha,
        num_sites,
        site,
    )


@functools.lru_cache(maxsize=8)
def _site_data(
    dataset: str,
    data_dir: str | None,
    seed: int,
    test_fraction: float,
    scheme: str,
    alpha: float,
    num_sites: int,
    site: int,
) -> ArrayDataset:
    train = load_dataset(dataset, data_dir, seed, test_fraction).train
    parts = partition(
        train.y, num_sites, scheme, seed=derive_seed(seed, _PARTITION_STREAM), alpha=alpha
    )
    return train.subset(parts[site])


def shuffle_seed(config: ExperimentConfig, round_number: int, site: int) -> int:
    """Seed of a site's batch order in one round."""
    return derive_seed(config.seed, _SHUFFLE_STREAM, round_number, site)


def new_model(config: ExperimentConfig, data_dir: str | None = None) -> torch.nn.Module:
    """The model architecture of the experiment, randomly initialised from the run seed."""
    splits = load_dataset(
        config.dataset, data_dir or config.data_dir, config.seed, config.test_fraction
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(config.seed, _INIT_STREAM))
        return build_model(config.model, splits.input_shape, splits.num_classes)


def init_global_model(config: ExperimentConfig, store_config: StoreConfig | None) -> dict[str, Any]:
    """Aggregator: build the initial global model and put it into the store."""
    weights = weights_of(new_model(config))
    ref, put_seconds = put_weights(weights, store_config)
    return {"weights": ref, "model_bytes": weights_nbytes(weights), "put_seconds": put_seconds}


def train_site(
    config: ExperimentConfig,
    site: int,
    num_sites: int,
    round_number: int,
    global_model: Mapping[str, Any],
    store_config: StoreConfig | None,
    options: SiteOptions | None = None,
) -> dict[str, Any]:
    """Site: resolve the global model, train on the site's own data, put the update.

    ``options`` (this site's batch size, epochs, threads, device, data) override ``config``.

    Returns:
        ``{"weights": <ref to the update>, "num_samples", "train_loss", "resolve_seconds",
        "train_seconds", "put_seconds", "site", "host", "pid"}``; every time is measured here.
    """
    options = options or SiteOptions()
    torch.set_num_threads(options.torch_threads or config.torch_threads)
    data = site_data(config, site, num_sites, options.data_dir)
    weights, resolve_seconds = resolve_weights(global_model["weights"])
    model = new_model(config, options.data_dir)
    load_weights(model, weights)
    del weights
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
    )
    train_seconds = time.perf_counter() - start
    ref, put_seconds = put_weights(weights_of(model), store_config)
    return {
        "weights": ref,
        "site": site,
        "num_samples": len(data),
        "train_loss": train_loss,
        "resolve_seconds": resolve_seconds,
        "train_seconds": train_seconds,
        "put_seconds": put_seconds,
        "local_epochs": epochs,
        "batch_size": batch_size,
        "device": device,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def aggregate_updates(
    *train_results: Mapping[str, Any],
    store_config: StoreConfig | None,
    save_path: str | None = None,
) -> dict[str, Any]:
    """Aggregator: FedAvg over the sites' updates, resolving one update at a time.

    Args:
        train_results: The train apps' results (Parsl passes their futures' values).
        store_config: Where to put the new global model (``None``: return it directly).
        save_path: Also write the new global model there (the final ``model.pt``).
    """
    resolve_seconds = 0.0

    def updates() -> Iterator[tuple[Weights, int]]:
        nonlocal resolve_seconds
        for result in train_results:
            weights, seconds = resolve_weights(result["weights"])
            resolve_seconds += seconds
            yield weights, int(result["num_samples"])
            del weights  # keep at most one update alive at a time

    start = time.perf_counter()
    new_global = FedAvg().aggregate(updates())
    aggregate_seconds = time.perf_counter() - start - resolve_seconds
    if save_path is not None:
        save_weights(new_global, save_path)
    ref, put_seconds = put_weights(new_global, store_config)
    return {
        "weights": ref,
        "model_bytes": weights_nbytes(new_global),
        "num_updates": len(train_results),
        "aggregate_seconds": aggregate_seconds,
        "resolve_seconds": resolve_seconds,
        "put_seconds": put_seconds,
    }


def evaluate_global(
    config: ExperimentConfig,
    global_model: Mapping[str, Any],
    options: SiteOptions | None = None,
) -> dict[str, Any]:
    """Aggregator: accuracy and loss of the global model on the global test set."""
    options = options or SiteOptions()
    torch.set_num_threads(options.torch_threads or config.torch_threads)
    data_dir = options.data_dir or config.data_dir
    test = load_dataset(config.dataset, data_dir, config.seed, config.test_fraction).test
    weights, resolve_seconds = resolve_weights(global_model["weights"])
    model = new_model(config, options.data_dir)
    load_weights(model, weights)
    del weights
    start = time.perf_counter()
    accuracy, loss = evaluate(model, test, device=options.device or "cpu")
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


def bind_apps(site_labels: list[str], aggregator_label: str) -> FederationApps:
    """Wrap the app bodies with ``python_app`` for the given executor labels."""
    on_aggregator = [aggregator_label]
    return FederationApps(
        init=python_app(init_global_model, executors=on_aggregator),
        train={label: python_app(train_site, executors=[label]) for label in site_labels},
        aggregate=python_app(aggregate_updates, executors=on_aggregator),
        evaluate=python_app(evaluate_global, executors=on_aggregator),
    )
