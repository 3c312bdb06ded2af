"""A small CNN: two 3x3 convolutions, one max-pool, two dense layers."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv(C->32) ReLU Conv(32->64) ReLU MaxPool(2) Dense(128) ReLU Dense(classes).

    On digits (1x8x8) this has 0.15 M parameters (0.6 MB of float32 weights).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (height // 2) * (width // 2), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) of a batch of inputs (N, C, H, W)."""
        return self.classifier(self.features(x))
