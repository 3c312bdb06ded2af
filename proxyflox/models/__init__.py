"""Models by name; input shape and class count come from the dataset."""

from __future__ import annotations

from torch import nn

from proxyflox.config import MODELS, unknown_choice
from proxyflox.models.cnn import SmallCNN

__all__ = ["SmallCNN", "build_model"]


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build an untrained model; call under a seeded RNG for reproducible initial weights."""
    if name == "cnn":
        return SmallCNN(input_shape, num_classes)
    raise unknown_choice("model", name, MODELS)
