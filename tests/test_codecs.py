"""Update codecs: each codec's bound, the wire format through a real ProxyStore store, error
feedback, and runs that compress (per site, asynchronous, resumed, broadcast)."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from proxystore.connectors.file import FileConnector
from proxystore.proxy import get_factory
from proxystore.store import Store
from proxystore.store.utils import get_key

from proxyflox.apps import train_site
from proxyflox.checkpoints import checkpoint_dir, read_checkpoint
from proxyflox.codecs import CodecSpec, UpdateEncoder, decode_weights, tally
from proxyflox.codecs.feedback import Residuals, residual_of, with_residual
from proxyflox.codecs.int8 import LEVELS
from proxyflox.codecs.settings import CodecSettings
from proxyflox.controller import AppBodies, RunResult, run_federation
from proxyflox.errors import ConfigError
from proxyflox.models.weights import weights_of
from proxyflox.results import create_run_dir
from proxyflox.settings import load_experiment
from proxyflox.sites import load_deployment
from proxyflox.stores import put_weights, resolve_weights
from proxyflox.weights import Weights, weights_nbytes
from tests.helpers import DEFAULT_EXPERIMENT, experiment_model, only_run_dir, run_cli
from tests.test_resume import comparable, kill_after_round

Runner = Callable[..., RunResult]


def roundtrip(weights: Weights, **spec: object) -> tuple[Weights, bytearray]:
    encoder = UpdateEncoder(CodecSpec(**spec))  # type: ignore[arg-type]
    encoded = encoder(weights)
    return decode_weights(encoded), encoded


def a_change(seed: int = 0) -> Weights:
    """A model-shaped change with BatchNorm's integer counter."""
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 0.05, (16, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(0, 0.01, 16).astype(np.float32),
        "fc.weight": rng.normal(0, 0.02, (10, 4096)).astype(np.float32),
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),
    }


def model_weights() -> Weights:
    return weights_of(experiment_model(load_experiment(DEFAULT_EXPERIMENT)))


# -- each codec's promise ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "fp16", "int8", "topk"])
def test_the_lossless_stage_round_trips_exactly_and_integers_travel_exactly(codec: str) -> None:
    change = a_change()
    plain, _ = roundtrip(change, codec=codec)
    zipped, _ = roundtrip(change, codec=codec, lossless="zstd")
    assert list(zipped) == list(change)
    assert all(np.array_equal(zipped[name], plain[name]) for name in change)  # zstd loses nothing
    assert zipped["bn.num_batches_tracked"].dtype == np.int64
    assert int(zipped["bn.num_batches_tracked"]) == 12
    assert all(zipped[name].dtype == change[name].dtype for name in change)
    if codec == "none":
        assert all(np.array_equal(zipped[name], change[name]) for name in change)


def test_fp16_is_within_half_precision_and_halves_the_bytes() -> None:
    change = a_change()
    change["fc.weight"] *= 1e-3  # changes this small are subnormal as plain halves
    decoded, encoded = roundtrip(change, codec="fp16")
    for name in ("conv.weight", "fc.weight"):
        x, y = change[name], decoded[name]
        peak = np.abs(x).max()
        large = np.abs(x) >= peak * 2.0**-28
        assert np.all(np.abs(y - x)[large] <= np.abs(x[large]) * 2.0**-11)
        assert np.all(np.abs(y - x)[~large] <= peak * 2.0**-39)
    weights = model_weights()
    assert weights_nbytes(weights) / len(roundtrip(weights, codec="fp16")[1]) > 1.99
    assert len(encoded) < weights_nbytes(change) / 1.9


@pytest.mark.parametrize("scale", ["per_channel", "per_tensor"])
def test_int8_nearest_is_within_half_a_step_per_entry(scale: str) -> None:
    change = a_change()
    decoded, _ = roundtrip(change, codec="int8", scale=scale)
    for name in ("conv.weight", "conv.bias", "fc.weight"):
        x = change[name]
        rows = (
            x.reshape(x.shape[0], -1) if scale == "per_channel" and x.ndim > 1 else x.reshape(1, -1)
        )
        step = np.abs(rows).max(axis=1, keepdims=True) / LEVELS
        error = np.abs(decoded[name].reshape(rows.shape) - rows)
        # Half a step, up to float32's own rounding of the entry.
        assert np.all(error <= step / 2 + 4 * np.finfo(np.float32).eps * np.abs(rows))
    weights = model_weights()
    assert weights_nbytes(weights) / len(roundtrip(weights, codec="int8")[1]) >= 3.9


def test_int8_keeps_rows_of_zeros_and_of_subnormal_changes_finite() -> None:
    tiny = np.finfo(np.float32).smallest_subnormal
    change = {"w": np.array([[0, 0, 0], [3 * tiny, -tiny, 0], [1e-3, 2e-3, -1e-3]], np.float32)}
    with np.errstate(divide="raise", invalid="raise"):  # no division by zero, no NaN cast
        decoded, _ = roundtrip(change, codec="int8")
    assert np.all(np.isfinite(decoded["w"]))
    assert np.array_equal(decoded["w"][:2], change["w"][:2])  # steps of the smallest float32
    assert np.all(np.abs(decoded["w"][2] - change["w"][2]) <= 2e-3 / LEVELS / 2 * 1.0001)


def test_int8_stochastic_rounding_is_within_a_step_unbiased_and_seeded() -> None:
    x = {"w": np.full((4, 1000), 0.3, dtype=np.float32)}
    x["w"][:, 0] = 1.0  # the step is 1/127: 0.3 lies between two levels
    first = decode_weights(UpdateEncoder(CodecSpec(codec="int8", rounding="stochastic"), 7)(x))
    again = decode_weights(UpdateEncoder(CodecSpec(codec="int8", rounding="stochastic"), 7)(x))
    assert np.array_equal(first["w"], again["w"])
    step = 1.0 / LEVELS
    assert np.all(np.abs(first["w"] - x["w"]) < step)
    assert len(np.unique(first["w"][:, 1:])) == 2  # both neighbouring levels occur
    assert abs(float(first["w"][:, 1:].mean()) - 0.3) < step / 10


@pytest.mark.parametrize("ratio", [0.01, 0.1, 1.0])
def test_topk_keeps_exactly_the_largest_magnitude_entries(ratio: float) -> None:
    change = a_change()
    change["big"] = np.random.default_rng(1).normal(0, 1e-4, 300_000).astype(np.float32)
    decoded, _ = roundtrip(change, codec="topk", ratio=ratio)
    for name in ("conv.weight", "conv.bias", "fc.weight", "big"):
        x = change[name].reshape(-1)
        y = decoded[name].reshape(-1)
        kept = np.flatnonzero(y)
        assert kept.size == max(1, math.ceil(ratio * x.size))
        assert np.array_equal(y[kept], x[kept])  # sent exactly
        dropped = np.delete(np.abs(x), kept)
        assert dropped.size == 0 or np.abs(x[kept]).min() >= dropped.max()
    weights = model_weights()
    assert weights_nbytes(weights) / len(roundtrip(weights, codec="topk", ratio=0.01)[1]) >= 50


def test_settings_take_a_codec_name_and_refuse_bad_values_in_one_line() -> None:
    assert CodecSettings.model_validate("int8").codec == "int8"
    for overrides, message in [
        ({"compression.codec": "top-k"}, "compression.codec: unknown value 'top-k' (did you mean"),
        ({"compression.ratio": "0"}, "compression.ratio: must be in (0, 1]"),
        ({"compression.lossless": "gzip"}, "compression.lossless: unknown value 'gzip'"),
        ({"compression.codec": "fp16", "transfer": "direct"}, "they need transfer: proxy"),
        ({"site_options.x.compression.rounding": "up"}, "site_options.x.compression.rounding"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_experiment(DEFAULT_EXPERIMENT, overrides)
        assert message in str(error.value)
        assert "\n" not in str(error.value)


# -- through a real store ------------------------------------------------------------------------


def test_the_format_travels_with_the_proxy_and_a_key_decodes_without_settings(
    tmp_path: Path,
) -> None:
    change = a_change()
    with Store("codecs", FileConnector(str(tmp_path)), cache_size=0, register=True) as store:
        with tally() as sent:
            proxy, _ = put_weights(change, store, UpdateEncoder(CodecSpec(codec="int8")))
        expected, encoded = roundtrip(change, codec="int8")
        stored = tmp_path / get_key(proxy)[0]  # a file key holds the file name
        assert sent.encoded_bytes == len(encoded) == stored.stat().st_size
        assert sent.raw_bytes == weights_nbytes(change)
        from_proxy = get_factory(proxy)()  # as a site resolves: the proxy's own deserializer
        with tally() as read:
            from_key, _ = resolve_weights(get_key(proxy), store)  # as the aggregator reads
        assert read.decode_seconds > 0
        for name in change:
            assert np.array_equal(from_proxy[name], expected[name])
            assert np.array_equal(from_key[name], expected[name])


# -- error feedback ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["topk", "int8", "fp16"])
def test_error_feedback_conserves_mass_over_rounds(tmp_path: Path, codec: str) -> None:
    residuals = Residuals(str(tmp_path), "run", site=0)
    spec = CodecSpec(codec=codec, ratio=0.01)
    true_total = {name: np.zeros_like(a, dtype=np.float64) for name, a in a_change().items()}
    sent_total = {name: np.zeros_like(a, dtype=np.float64) for name, a in a_change().items()}
    accepted = None
    for round_number in range(1, 9):
        change = a_change(seed=round_number)
        for name in change:
            true_total[name] += change[name]
        carried = with_residual(change, residuals.load(accepted))
        encoder = UpdateEncoder(spec)
        sent = decode_weights(encoder(carried))
        residuals.save(round_number, residual_of(carried, sent))
        residuals.prune(accepted)
        accepted = round_number
        for name in change:
            sent_total[name] += sent[name]
    final = residuals.load(accepted)
    assert final is not None
    assert sorted(p.name for p in residuals.directory.iterdir()) == [
        "residual-7.npz",
        "residual-8.npz",
    ]
    for name in ("conv.weight", "conv.bias", "fc.weight"):
        np.testing.assert_allclose(sent_total[name] + final[name], true_total[name], atol=1e-5)
    assert int(sent_total["bn.num_batches_tracked"]) == int(true_total["bn.num_batches_tracked"])


# -- runs that compress --------------------------------------------------------------------------


def site_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "sites.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_a_site_compresses_by_its_own_options_and_the_rest_send_full_weights(
    run_local: Runner, tmp_path: Path
) -> None:
    result = run_local(
        rounds=2,
        **{
            "site_options.site-1.compression.codec": "topk",
            "site_state_dir": str(tmp_path / "state"),
        },
    )
    raw = weights_nbytes(model_weights())
    rows = site_rows(result.run_dir)
    for row in rows:
        assert int(row["raw_bytes"]) == raw
        if row["executor"] == "site-1":
            assert int(row["sent_bytes"]) < raw / 50
        else:
            assert raw <= int(row["sent_bytes"]) < raw * 1.01  # ProxyStore's own format
    by_round = {row["round"]: row for row in result.rounds}
    assert int(by_round[1]["sent_bytes"]) == sum(
        int(r["sent_bytes"]) for r in rows if r["round"] == "1"
    )
    assert float(by_round[1]["decode_seconds"]) > 0
    assert result.final_accuracy > 0.3
    assert not (tmp_path / "state" / result.run_dir.name).exists()  # a finished run keeps none


@pytest.mark.parametrize("strategy", ["fedasync", "fedbuff"])
def test_asynchronous_strategies_learn_from_compressed_changes(
    run_local: Runner, tmp_path: Path, strategy: str
) -> None:
    result = run_local(
        max_updates=12,
        **{"strategy.name": strategy, "compression.codec": "int8",
           "site_state_dir": str(tmp_path / "state"), "store.access_log": "true"},
    )  # fmt: skip
    with open(result.run_dir / "updates.csv", newline="") as file:
        updates = list(csv.DictReader(file))
    assert max(int(row["staleness"]) for row in updates) > 0  # stale changes were rebuilt
    assert all(int(row["sent_bytes"]) * 3.9 <= int(row["raw_bytes"]) for row in updates)
    assert result.final_accuracy > 0.3
    log = [
        line.split("\t") for line in (result.run_dir / "store-access.log").read_text().splitlines()
    ]
    assert {k for _, op, k in log if op == "put"} == {k for _, op, k in log if op == "evict"}


def test_a_site_still_training_when_the_budget_is_spent_leaves_no_object_and_no_state(
    tmp_path: Path,
) -> None:
    """Its train app finishes (puts its update, saves its residual) before the state goes."""

    def slow_site_3(*args: Any, **kwargs: Any) -> Any:
        if args[1] == 3:  # the site
            time.sleep(3)
        return train_site(*args, **kwargs)

    state = tmp_path / "state"
    config = load_experiment(
        DEFAULT_EXPERIMENT,
        {"strategy.name": "fedbuff", "max_updates": 3, "compression.codec": "int8",
         "site_state_dir": str(state), "store.access_log": "true",
         "runs_dir": str(tmp_path / "runs")},
    )  # fmt: skip
    run_dir = create_run_dir(config.runs_dir, config.name)
    run_federation(
        config, load_deployment("local.py"), run_dir, progress=lambda line: None,
        bodies=AppBodies(train=slow_site_3, prime=None),
    )  # fmt: skip
    with open(run_dir / "updates.csv", newline="") as file:
        assert "3" not in {row["site"] for row in csv.DictReader(file)}  # it was dropped
    log = [line.split("\t") for line in (run_dir / "store-access.log").read_text().splitlines()]
    puts = {k for _, op, k in log if op == "put"}
    assert len(puts) >= 1 + 3 + 1 + 1  # initial model, 3 updates, the aggregate, site 3's
    assert puts == {k for _, op, k in log if op == "evict"}
    assert not (state / run_dir.name).exists()


def test_an_fp16_broadcast_is_what_the_checkpoint_and_the_sites_hold(run_local: Runner) -> None:
    result = run_local(rounds=2, **{"compression.broadcast": "fp16"})
    model = {name: t.numpy() for name, t in torch.load(result.run_dir / "model.pt").items()}
    checkpoint, _ = read_checkpoint(checkpoint_dir(result.run_dir, 2))
    as_broadcast, _ = roundtrip(model, codec="fp16")
    for name, array in model.items():
        assert np.array_equal(checkpoint[name], array)
        assert np.array_equal(as_broadcast[name], array)  # already at the broadcast's precision
    initial = weights_of(experiment_model(load_experiment(DEFAULT_EXPERIMENT)))
    rounded, _ = roundtrip(initial, codec="fp16")
    assert not all(np.array_equal(rounded[name], initial[name]) for name in initial)
    assert result.final_accuracy > 0.3


def test_a_killed_and_resumed_run_with_residuals_equals_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    common = ["--rounds", "5", "--compression.codec", "topk", "--compression.ratio", "0.05",
              "--clients_per_round", "3"]  # fmt: skip
    state = tmp_path / "state"
    straight = run_cli(
        *common, "--runs_dir", "straight", "--site_state_dir", str(state), cwd=tmp_path
    )
    assert straight.returncode == 0, straight.stderr
    straight_dir = only_run_dir(tmp_path / "straight")
    stopped_dir = kill_after_round(
        [*common, "--runs_dir", "stopped", "--site_state_dir", str(state)], tmp_path, 2
    )
    assert any((state / stopped_dir.name).rglob("residual-*.npz"))  # kept for the resume
    resumed = run_cli("--resume", str(stopped_dir), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(straight_dir / "model.pt")
    b = torch.load(stopped_dir / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(stopped_dir) == comparable(straight_dir)
    assert not (state / stopped_dir.name).exists()
