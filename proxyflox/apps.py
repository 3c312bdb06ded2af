"""The app bodies: plain functions that run on a site or on the aggregator.

Each takes and returns the typed records of :mod:`proxyflox.messages` and is testable without
Parsl; :mod:`proxyflox.controller.runtime` binds them to executors. Their docstrings stay short:
Parsl ships each function with every task, docstring included; the records document the fields.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from proxystore.store.exceptions import ProxyResolveMissingKeyError
from proxystore.utils.environment import home_dir

from proxyflox.attacks import poisoned
from proxyflox.checkpoints import read_checkpoint, write_checkpoint
from proxyflox.codecs import CodecSpec, UpdateEncoder, decode_weights
from proxyflox.codecs import tally as codec_tally
from proxyflox.codecs.feedback import Residuals, residual_of, with_residual
from proxyflox.data import TEST, TRAIN, ArrayDataset, DatasetInfo, dataset_info, load_folder
from proxyflox.data import load_split as load_dataset_split
from proxyflox.data.partition import partition
from proxyflox.errors import (
    ConfigError,
    LayoutMismatchError,
    TooFewUpdatesError,
    WeightsFormatError,
)
from proxyflox.messages import (
    AggregateResult,
    AggregateTask,
    DataSpec,
    Evaluation,
    GlobalModel,
    InitTask,
    Instructions,
    ModelSpec,
    Primed,
    Rejection,
    SiteSetup,
    TrainResult,
    UpdateRef,
    WeightsRef,
)
from proxyflox.models import build_model
from proxyflox.models.weights import load_weights, save_weights, weights_of
from proxyflox.privacy import clip_change
from proxyflox.seeds import CODEC_STREAM, INIT_STREAM, PARTITION_STREAM, SHUFFLE_STREAM, derive_seed
from proxyflox.stores import enter_site, open_app_store, put_weights, resolve_weights, store_of
from proxyflox.stores.host_copies import remove_copies
from proxyflox.strategies import Update, state_scalars
from proxyflox.training import evaluate, train_local
from proxyflox.weights import (
    Layout,
    Weights,
    check_finite,
    check_layout,
    flatten_state,
    layout_of,
    unflatten_state,
    weights_nbytes,
)

#: Sites whose data one worker process keeps (train and local test splits together).
SITE_DATA_CACHE = 8


def site_data(
    spec: DataSpec, site: int, *, split: str = TRAIN, info: DatasetInfo | None = None
) -> ArrayDataset:
    """One site's samples, computed where the site runs (nothing is shipped to it).

    For the partitioned datasets this is the site's share of the split, partitioned from the
    seed (the test split by the same plan, so a site's local test set has the label mix of its
    training data). For ``folder`` it is the machine's own data, unpartitioned; ``info`` (the
    facts travelling with the global model) maps its class folders to the aggregator's labels.
    ``samples_per_site`` caps training samples only.
    """
    return _site_data(spec, site, split, info)


@functools.lru_cache(maxsize=SITE_DATA_CACHE)
def _site_data(spec: DataSpec, site: int, split: str, info: DatasetInfo | None) -> ArrayDataset:
    cap = spec.samples_per_site if split == TRAIN else None
    if spec.dataset == "folder":
        if spec.data_dir is None:
            raise ConfigError(
                f"data_dir: dataset folder: site {site} has no data_dir; set data_dir, or "
                "site_options.LABEL.data_dir for its executor"
            )
        local = load_folder(spec.data_dir, info.classes if info is not None else None)
        data = local.train if split == TRAIN else local.test
        if data is None:
            raise ConfigError(
                f"evaluate_sites: site {site}'s data at {spec.data_dir} has no local test split "
                "(a test/ folder next to train/, or x_test and y_test in the .npz)"
            )
        if cap is None or cap >= len(data):
            return data
        rng = np.random.default_rng(derive_seed(spec.seed, PARTITION_STREAM, site))
        return data.subset(np.sort(rng.permutation(len(data))[:cap]))
    full = load_split(spec, split)
    num_classes = (info or dataset_info(spec.dataset, spec.data_dir)).num_classes
    return full.subset(_partition_plan(spec, split, num_classes)[site])


@functools.lru_cache(maxsize=4)
def _partition_plan(spec: DataSpec, split: str, num_classes: int) -> list[np.ndarray]:
    # One worker hosts more sites than its data cache keeps when many clients are multiplexed
    # over few executors: every site's share then comes from this one plan instead of a fresh
    # partition of the whole split per task.
    return partition(
        load_split(spec, split).y,
        spec.num_sites,
        spec.partition,
        seed=derive_seed(spec.seed, PARTITION_STREAM),
        alpha=spec.alpha,
        classes_per_site=spec.classes_per_site,
        samples_per_site=spec.samples_per_site if split == TRAIN else None,
        num_classes=num_classes,
        what="training samples" if split == TRAIN else "test samples (evaluate_sites)",
    )


def load_split(spec: DataSpec, split: str) -> ArrayDataset:
    """A whole split of the dataset (``test``: the global test set on the aggregator)."""
    return load_dataset_split(
        spec.dataset, spec.data_dir, split, spec.seed, spec.test_fraction, spec.download
    )


def shuffle_seed(seed: int, round_number: int, site: int) -> int:
    """Seed of a site's batch order in one round."""
    return derive_seed(seed, SHUFFLE_STREAM, round_number, site)


#: Apps on threads (``local.py``) share torch's global generator, which seeding forks and
#: restores: two models built at once would draw from each other's stream.
_MODEL_INIT_LOCK = threading.Lock()


def new_model(spec: ModelSpec, info: DatasetInfo) -> torch.nn.Module:
    """The experiment's architecture, randomly initialised from the run seed."""
    with _MODEL_INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(spec.seed, INIT_STREAM))
        return build_model(
            spec.model,
            info.input_shape,
            info.num_classes,
            depth=spec.depth,
            width_multiplier=spec.width_multiplier,
        )


def prime_worker(setup: SiteSetup, sites: Sequence[int]) -> Primed:
    """Any executor: load its sites' data (none: the global test split) into this worker.

    Then it runs the code its first real task will run on a few samples, with nothing kept:
    a site trains a throwaway model at learning rate 0, the aggregator evaluates one.
    """
    start = time.perf_counter()
    loaded: list[str] = []
    errors: list[str] = []
    targets: list[int | None] = [*sites] or [None]
    for site in targets:
        try:
            info = dataset_info(setup.data.dataset, setup.data.data_dir)
            data = (
                load_split(setup.data, TEST)
                if site is None
                else site_data(setup.data, site, info=info)
            )
            loaded.append(f"{TEST if site is None else f'site {site}'}: {len(data)} samples")
            if site == targets[0]:
                _warm_up(setup, info, data, train=site is not None)
        except Exception as err:  # the train or evaluate app that needs the data says why
            errors.append(f"{type(err).__name__}: {err}".splitlines()[0])
    seconds = time.perf_counter() - start
    return Primed(
        os.getpid(), socket.gethostname(), tuple(loaded), seconds, errors[0] if errors else ""
    )


def _warm_up(setup: SiteSetup, info: DatasetInfo, data: ArrayDataset, *, train: bool) -> None:
    """Pay the first call's costs now, beside the other workers' priming, not in round 1.

    Creating the first optimizer imports ``torch._dynamo`` (``torch.optim`` disables it lazily):
    2-3 s of CPU here, which each site's first training would otherwise wait for.
    """
    torch.set_num_threads(setup.torch_threads)
    model = new_model(setup.model, info)
    few = data.subset(np.arange(min(len(data), setup.batch_size)))
    if train:
        train_local(
            model,
            few,
            epochs=1,
            batch_size=setup.batch_size,
            lr=0.0,
            momentum=0.0,
            shuffle_seed=0,
            device=setup.device,
        )
    else:
        evaluate(model, few, device=setup.device)


def as_broadcast(weights: Weights, broadcast: str) -> tuple[Weights, UpdateEncoder | None]:
    """The global model as the sites will receive it, and the encoder that puts it.

    With ``fp16`` the model is rounded here, so that what the aggregator keeps, checkpoints and
    sends are the same weights.
    """
    if broadcast == "exact":
        return weights, None
    encoder = UpdateEncoder(CodecSpec(codec=broadcast))
    return decode_weights(encoder(weights)), encoder


def init_global_model(task: InitTask) -> GlobalModel:
    """Aggregator: the initial global model (or a checkpoint's), put into the store."""
    setup = task.setup
    enter_site(setup.proxystore_home, setup.store_route)
    info = dataset_info(setup.data.dataset, setup.data.data_dir)
    state: dict[str, np.ndarray] = {}
    if task.resume_from is None:
        weights = weights_of(new_model(setup.model, info))
    else:
        weights, state = read_checkpoint(task.resume_from)
    store = open_app_store(task.store_config)
    weights, encoder = as_broadcast(weights, task.broadcast)
    return GlobalModel(
        weights=put_weights(weights, store, encoder)[0],
        dataset=info,
        state=put_weights(flatten_state(state), store)[0] if state else None,
        state_scalars=state_scalars(state),
        layout=layout_of(weights),
    )


def train_site(
    setup: SiteSetup,
    site: int,
    round_number: int,
    global_model: GlobalModel,
    instructions: Instructions,
    accepted_round: int | None = None,
) -> TrainResult:
    """Site: resolve the global model, train on the site's own data, put the (encoded) update."""
    enter_site(setup.proxystore_home, setup.store_route)
    torch.set_num_threads(setup.torch_threads)
    data = site_data(setup.data, site, info=global_model.dataset)
    if len(data) == 0:  # nothing to learn from: the aggregator skips the site, saying why
        return _without_samples(setup, site, global_model)
    received, resolve_seconds = resolve_weights(global_model.weights, shared=True)
    model = new_model(setup.model, global_model.dataset)
    load_weights(model, received)
    codec = setup.compression
    delta = instructions.update_kind == "delta" or codec is not None  # codecs encode changes
    if not delta and setup.attack is None:
        del received
    start = time.perf_counter()
    train_loss = train_local(
        model,
        data,
        epochs=setup.local_epochs,
        batch_size=setup.batch_size,
        lr=setup.lr,
        momentum=setup.momentum,
        shuffle_seed=shuffle_seed(setup.data.seed, round_number, site),
        device=setup.device,
        proximal_mu=instructions.proximal_mu,
    )
    train_seconds = time.perf_counter() - start
    update = weights_of(model)
    if setup.attack is not None:
        update = poisoned(setup.attack, setup.attack_scale, update, received)
    if delta:
        update = {name: array - received[name] for name, array in update.items()}
        del received
    unclipped = None
    if instructions.clip_norm is not None:  # before the change leaves the site (dpfedavg)
        update, unclipped = clip_change(update, instructions.clip_norm)
    residuals = None
    if codec is not None and codec.feeds_back and setup.state_dir is not None:
        residuals = Residuals(setup.state_dir, instructions.run_key, site)
        update = with_residual(update, residuals.load(accepted_round))
    store = store_of(global_model.weights)
    encoder = UpdateEncoder(
        codec or CodecSpec(),
        seed=derive_seed(setup.data.seed, CODEC_STREAM, round_number, site),
        keep_encoded=residuals is not None,
    )
    raw_bytes = weights_nbytes(update)
    with codec_tally() as sent:
        ref, put_seconds = put_weights(update, store, encoder)
    if residuals is not None:  # what was not sent waits for the next round
        residuals.save(round_number, residual_of(update, decode_weights(encoder.encoded)))
        residuals.prune(accepted_round)
    del update
    return TrainResult(
        site=site,
        update=ref,
        num_samples=len(data),
        class_counts=np.bincount(data.y, minlength=global_model.dataset.num_classes).tolist(),
        train_loss=train_loss,
        resolve_seconds=resolve_seconds,
        train_seconds=train_seconds,
        put_seconds=put_seconds,
        **_where_trained(setup),
        change=delta,
        sent_bytes=sent.encoded_bytes if store is not None else raw_bytes,  # direct: the arrays
        raw_bytes=raw_bytes,
        encode_seconds=sent.encode_seconds,
        unclipped=unclipped,
    )


def _without_samples(setup: SiteSetup, site: int, global_model: GlobalModel) -> TrainResult:
    """What a site without training samples returns: no update, nothing put."""
    return TrainResult(
        site=site,
        update=None,
        num_samples=0,
        class_counts=[0] * global_model.dataset.num_classes,
        train_loss=float("nan"),
        resolve_seconds=0.0,
        train_seconds=0.0,
        put_seconds=0.0,
        **_where_trained(setup),
    )


def _where_trained(setup: SiteSetup) -> dict[str, Any]:
    """The fields of a train result that say how and where the site ran."""
    return {
        "local_epochs": setup.local_epochs,
        "batch_size": setup.batch_size,
        "device": setup.device,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "netns": _network_namespace(),
        "batch_job": os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID", ""),
    }


def forget_site_state(setup: SiteSetup, run_key: str) -> int:
    """Site executor: remove what its sites kept for this run (a finished run needs none)."""
    if setup.state_dir is None:
        return 0
    directory = Path(setup.state_dir).expanduser() / run_key
    removed = sum(1 for entry in directory.rglob("*") if entry.is_file())
    shutil.rmtree(directory, ignore_errors=True)
    return removed


def forget_host_copies(setup: SiteSetup, copies: Sequence[str]) -> int:
    """Site executor: remove its host's copies of the run's global models (a run's end)."""
    return remove_copies(setup.proxystore_home or home_dir(), copies)


def _network_namespace() -> str:
    """This process's network namespace; empty where ``/proc`` has no such entry."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def aggregate_updates(task: AggregateTask) -> AggregateResult:
    """Aggregator: the strategy's new global model, checking and resolving one update at a time."""
    enter_site(task.proxystore_home, task.store_route)
    store = open_app_store(task.store_config)
    resolve_seconds = 0.0

    def fetch(ref: WeightsRef, layout: Layout | None = None) -> Weights:
        nonlocal resolve_seconds
        value, seconds = resolve_weights(ref, store, layout)
        resolve_seconds += seconds
        return value

    strategy = task.strategy
    # A site's change becomes its model again where the strategy works on models, except for
    # a plain mean of models: the global model plus the mean of the changes, which keeps the
    # global model out of memory until the changes are averaged.
    rebuild = strategy.update_kind == "weights" and any(u.change for u in task.updates)
    mean_of_changes = (
        rebuild
        and strategy.averages_models
        and all(u.change and u.base is None for u in task.updates)
    )
    rebuild &= not mean_of_changes
    layout = task.layout
    rejected: list[Rejection] = []
    used = 0

    def updates(current: Weights) -> Iterator[Update]:
        nonlocal layout, used
        for position, update in enumerate(task.updates):
            site = position if update.site is None else update.site
            weights, why = checked_update(update, layout, fetch)
            if weights is None:
                rejected.append((position, site, why))
                continue
            layout = layout or layout_of(weights)
            if update.change and rebuild:
                base = current if update.base is None else fetch(update.base)
                weights = with_base(weights, base)
                del base
            used += 1
            yield Update(weights, update.num_samples, update.staleness, update.unclipped)
            del weights  # before the next fetch: one update's arrays alive at a time
        if used < task.min_updates:
            raise TooFewUpdatesError(
                f"{used} of {len(task.updates)} updates passed the aggregator's checks, fewer "
                f"than the {task.min_updates} needed",
                tuple(rejected),
            )

    with codec_tally() as decoded:
        needs_global = strategy.uses_global_model or rebuild
        current = fetch(task.global_weights) if needs_global else {}
        previous_state = (
            unflatten_state(fetch(task.state))
            if task.state is not None
            else strategy.initial_state()
        )
        start = time.perf_counter()
        new_global, new_state = strategy.aggregate_train(current, updates(current), previous_state)
        if mean_of_changes:
            add_into(new_global, fetch(task.global_weights))
        aggregate_seconds = time.perf_counter() - start - resolve_seconds
    del current, previous_state
    new_global, encoder = as_broadcast(new_global, task.broadcast)
    if task.save_path is not None:
        save_weights(new_global, task.save_path)
    checkpoint_start = time.perf_counter()
    if task.checkpoint_dir is not None:
        write_checkpoint(task.checkpoint_dir, new_global, new_state)
    checkpoint_seconds = time.perf_counter() - checkpoint_start
    if task.result_store_config is not None:
        store = open_app_store(task.result_store_config)
    ref, put_seconds = put_weights(new_global, store, encoder)
    state_ref = None
    if new_state:
        state_ref, state_put_seconds = put_weights(flatten_state(new_state), store)
        put_seconds += state_put_seconds
    return AggregateResult(
        model=GlobalModel(
            weights=ref,
            dataset=task.dataset,
            state=state_ref,
            state_scalars=state_scalars(new_state),
            layout=layout_of(new_global),
        ),
        model_bytes=weights_nbytes(new_global),
        num_updates=used,
        aggregate_seconds=aggregate_seconds,
        resolve_seconds=resolve_seconds,
        put_seconds=put_seconds,
        checkpoint_seconds=checkpoint_seconds,
        decode_seconds=decoded.decode_seconds,
        rejected=tuple(rejected),
    )


def checked_update(
    update: UpdateRef, layout: Layout | None, fetch: Callable[[WeightsRef, Layout | None], Weights]
) -> tuple[Weights | None, str]:
    """One site's update read and checked, or ``None`` and why it is left out (one line).

    Checked before any of it is used: samples reported, readable as the project's format (never
    unpickled), the model's names, shapes and dtypes (from the header, before decoding), every
    value finite.
    """
    if update.num_samples == 0:
        return None, "0 training samples, skipped"
    if update.num_samples < 0:
        return None, f"update rejected: it reports {update.num_samples} training samples"
    try:
        weights = fetch(update.update, layout)
        if layout is not None:  # again on the arrays: direct transfer has no header
            check_layout(((n, a.dtype, a.shape) for n, a in weights.items()), layout)
        check_finite(weights)
    except LayoutMismatchError as err:
        return None, f"update rejected: {err}"
    except WeightsFormatError as err:
        return None, f"update unreadable: {err}"
    except ProxyResolveMissingKeyError:
        return None, "update missing from the store (evicted, or never written)"
    return weights, ""


def add_into(total: Weights, weights: Weights) -> None:
    """``total += weights``, array by array.

    A function of its own: no view of ``weights`` outlives it (a view keeps the whole buffer it
    was read from alive).
    """
    for name, array in weights.items():
        total[name] += array


def with_base(change: Weights, base: Weights) -> Weights:
    """A site's model from its change: in place where the arrays are writable, else one copy."""
    for name, array in change.items():
        if array.flags.writeable:
            array += base[name]
        else:
            change[name] = array + base[name]
    return change


def evaluate_global(setup: SiteSetup, global_model: GlobalModel) -> Evaluation:
    """Aggregator: the global model on the global test set."""
    return _evaluate(setup, global_model, load_split(setup.data, TEST))


def evaluate_site(setup: SiteSetup, site: int, global_model: GlobalModel) -> Evaluation:
    """Site: the global model on the site's own local test data (``evaluate_sites``)."""
    data = site_data(setup.data, site, split=TEST, info=global_model.dataset)
    evaluation = _evaluate(setup, global_model, data)
    return Evaluation(
        accuracy=evaluation.accuracy,
        loss=evaluation.loss,
        evaluate_seconds=evaluation.evaluate_seconds,
        resolve_seconds=evaluation.resolve_seconds,
        site=site,
        num_samples=len(data),
        class_counts=np.bincount(data.y, minlength=global_model.dataset.num_classes).tolist(),
    )


def _evaluate(setup: SiteSetup, global_model: GlobalModel, data: ArrayDataset) -> Evaluation:
    """Resolve the global model and measure it on ``data`` where this app runs."""
    enter_site(setup.proxystore_home, setup.store_route)
    torch.set_num_threads(setup.torch_threads)
    weights, resolve_seconds = resolve_weights(global_model.weights, shared=True)
    model = new_model(setup.model, global_model.dataset)
    load_weights(model, weights)
    del weights
    start = time.perf_counter()
    accuracy, loss = evaluate(model, data, device=setup.device)
    return Evaluation(accuracy, loss, time.perf_counter() - start, resolve_seconds)
