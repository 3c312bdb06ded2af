"""Models by name: forward shapes, parameter counts, sizes, and the errors for bad names."""

from __future__ import annotations

import pytest
import torch

from proxyflox.errors import ConfigError
from proxyflox.models import DepthCNN, MobileNetLike, SmallCNN, build_model
from proxyflox.models.weights import weights_of
from proxyflox.settings import load_experiment
from proxyflox.weights import weights_nbytes
from tests.helpers import DEFAULT_EXPERIMENT, experiment_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["cnn", "depth_cnn", "mobilenet"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_model_maps_a_batch_to_class_scores(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 7, depth=3, width_multiplier=0.5)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(5, *shape)).shape == (5, 7)


def test_small_cnn_parameter_count() -> None:
    convs = (1 * 9 * 32 + 32) + (32 * 9 * 64 + 64)
    dense = (64 * 4 * 4 * 128 + 128) + (128 * 10 + 10)
    assert parameters(SmallCNN((1, 8, 8), 10)) == convs + dense == 151_306


@pytest.mark.parametrize("depth", [1, 2, 10])
@pytest.mark.parametrize("shape", SHAPES)
def test_depth_cnn_parameter_count_follows_its_layout(depth: int, shape: tuple[int, ...]) -> None:
    channels, height, width = shape
    first = channels * 9 * 32 + 32
    # Each block: a 3x3 convolution without bias (BatchNorm has one), BatchNorm weight + bias.
    blocks = (32 * 9 * 64 + 2 * 64) + (depth - 1) * (64 * 9 * 64 + 2 * 64)
    dense = (64 * height * width * 128 + 128) + (128 * 10 + 10)
    model = DepthCNN(shape, 10, depth)
    assert parameters(model) == first + blocks + dense
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == depth


def test_depth_cnn_grows_by_the_same_bytes_per_block() -> None:
    sizes = {n: weights_nbytes(weights_of(DepthCNN((1, 28, 28), 10, n))) for n in (1, 10, 50)}
    # One 64->64 3x3 convolution, BatchNorm weight+bias and running mean+var (float32), plus
    # BatchNorm's num_batches_tracked (int64).
    per_block = (64 * 64 * 9 + 4 * 64) * 4 + 8
    assert sizes[10] - sizes[1] == 9 * per_block
    assert sizes[50] - sizes[1] == 49 * per_block
    assert [round(sizes[n] / 1e6, 1) for n in (1, 10, 50)] == [25.8, 27.1, 33.0]


def test_mobilenet_on_cifar10_matches_mobilenet_v1_and_scales_with_width() -> None:
    full = MobileNetLike((3, 32, 32), 10)
    # MobileNet v1's 3.2 M parameters (28 layers) with a 10-class head.
    assert parameters(full) == 3_217_226
    assert round(weights_nbytes(weights_of(full)) / 1e6, 1) == 13.0
    depthwise = [
        m for m in full.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels
    ]
    assert len(depthwise) == 13
    assert all(m.in_channels > 1 for m in depthwise)
    half = parameters(MobileNetLike((3, 32, 32), 10, width_multiplier=0.5))
    quarter = parameters(MobileNetLike((3, 32, 32), 10, width_multiplier=0.25))
    # Pointwise convolutions dominate, so the count falls about with the multiplier's square.
    assert 0.2 < half / parameters(full) < 0.3
    assert 0.2 < quarter / half < 0.3


def test_the_same_seed_gives_the_same_initial_weights() -> None:
    torch.manual_seed(3)
    first = weights_of(build_model("mobilenet", (3, 32, 32), 10, width_multiplier=0.25))
    torch.manual_seed(3)
    again = weights_of(build_model("mobilenet", (3, 32, 32), 10, width_multiplier=0.25))
    assert all((first[name] == again[name]).all() for name in first)


def test_an_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        build_model("resnet", (1, 8, 8), 10)
    assert str(caught.value) == "model: unknown value 'resnet'; allowed: cnn, depth_cnn, mobilenet"
    with pytest.raises(ConfigError, match=r"did you mean 'mobilenet'\?"):
        load_experiment(DEFAULT_EXPERIMENT, {"model": "mobilnet"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"depth": "0"}, "depth: must be at least 1, got 0"),
        ({"depth": "deep"}, "depth: must be an integer, got 'deep'"),
        ({"width_multiplier": "0"}, "width_multiplier: must be greater than 0, got 0.0"),
    ],
)
def test_bad_model_settings_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(DEFAULT_EXPERIMENT, overrides)
    assert message in str(caught.value)


def test_model_settings_reach_the_built_model() -> None:
    config = load_experiment(DEFAULT_EXPERIMENT, {"model": "depth_cnn", "depth": "4"})
    model = experiment_model(config)
    assert isinstance(model, DepthCNN)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 4
    config = load_experiment(DEFAULT_EXPERIMENT, {"model": "mobilenet", "width_multiplier": "0.5"})
    assert parameters(experiment_model(config)) == parameters(
        MobileNetLike((1, 8, 8), 10, width_multiplier=0.5)
    )
