"""Models by name; input shape and class count come from the dataset."""

from __future__ import annotations

from torch import nn

from proxyflox.errors import unknown_choice
from proxyflox.models.cnn import SmallCNN
from proxyflox.models.depth_cnn import DepthCNN
from proxyflox.models.mobilenet import MobileNetLike
from proxyflox.settings import MODELS

__all__ = ["DepthCNN", "MobileNetLike", "SmallCNN", "build_model"]


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
        name: ``cnn``, ``depth_cnn`` or ``mobilenet``.
        input_shape: (C, H, W) of one input.
        num_classes: Size of the output layer.
        depth: Number of Conv64+BatchNorm blocks of ``depth_cnn``.
        width_multiplier: Channel scale of ``mobilenet``.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    if name == "cnn":
        return SmallCNN(input_shape, num_classes)
    if name == "depth_cnn":
        return DepthCNN(input_shape, num_classes, depth)
    if name == "mobilenet":
        return MobileNetLike(input_shape, num_classes, width_multiplier)
    raise unknown_choice("model", name, MODELS)
