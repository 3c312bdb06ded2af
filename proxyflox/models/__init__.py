"""Models by name; input shape and class count come from the dataset."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from proxyflox.errors import unknown_choice
from proxyflox.models.cnn import SmallCNN
from proxyflox.models.depth_cnn import DepthCNN
from proxyflox.models.mobilenet import MobileNetLike

__all__ = ["MODELS", "DepthCNN", "MobileNetLike", "SmallCNN", "build_model"]

#: Builds a model from (input shape, classes, depth, width multiplier); each takes what it has.
Builder = Callable[[tuple[int, ...], int, int, float], nn.Module]

#: ``model`` name -> builder; a new model is one module and one entry here.
MODELS: dict[str, Builder] = {
    "cnn": lambda shape, classes, depth, width: SmallCNN(shape, classes),
    "depth_cnn": lambda shape, classes, depth, width: DepthCNN(shape, classes, depth),
    "mobilenet": lambda shape, classes, depth, width: MobileNetLike(shape, classes, width),
}


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int = 1,
    width_multiplier: float = 1.0,
) -> nn.Module:
    """Build an untrained model; call under a seeded RNG for reproducible initial weights.

    Args:
        name: A key of :data:`MODELS` (``cnn``, ``depth_cnn``, ``mobilenet``).
        input_shape: (C, H, W) of one input.
        num_classes: Size of the output layer.
        depth: Number of Conv64+BatchNorm blocks of ``depth_cnn``.
        width_multiplier: Channel scale of ``mobilenet``.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    if name not in MODELS:
        raise unknown_choice("model", name, MODELS)
    return MODELS[name](input_shape, num_classes, depth, width_multiplier)
