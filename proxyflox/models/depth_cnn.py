"""The depth-n CNN used for transfer-size sweeps: its size grows linearly with ``depth``."""

from __future__ import annotations

import torch
from torch import nn


class DepthCNN(nn.Module):
    """Conv(C->32) ReLU, ``depth`` x [Conv(->64) BatchNorm ReLU], Dense(128) ReLU Dense(classes).

    Every convolution is 3x3 with padding 1 and there is no pooling, so each block adds the same
    36,864 convolution weights plus BatchNorm's 128 parameters and 129 buffers (about 0.15 MB),
    and the first dense layer holds 64 x H x W x 128 weights. Sizes in MB (10^6 bytes of state)
    on MNIST's 1x28x28: 25.8 at depth 1, 27.1 at depth 10, 33.0 at depth 50.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int = 1) -> None:
        super().__init__()
        # torchvision loads only for the models that use it (it costs ~2 s per process).
        from torchvision.ops import Conv2dNormActivation

        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        channels, height, width = input_shape
        blocks: list[nn.Module] = [nn.Conv2d(channels, 32, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = 32
        for _ in range(depth):
            # Conv2dNormActivation: Conv (no bias: BatchNorm has one) + BatchNorm + ReLU.
            blocks.append(Conv2dNormActivation(in_channels, 64, kernel_size=3))
            in_channels = 64
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * height * width, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) of a batch of inputs (N, C, H, W)."""
        return self.classifier(self.features(x))
