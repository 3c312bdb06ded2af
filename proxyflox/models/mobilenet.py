"""A MobileNet-like model for 32x32 CIFAR-10: depthwise-separable blocks and a width multiplier."""

from __future__ import annotations

import torch
from torch import nn

#: (output channels, stride) of each depthwise-separable block: MobileNet v1's thirteen blocks.
#: The stem keeps stride 1 (ImageNet's stride-2 stem would shrink 32x32 inputs to 1x1 too early),
#: so a 32x32 image ends as a 2x2 map before global pooling.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32


def scaled_channels(channels: int, width_multiplier: float) -> int:
    """``channels x width_multiplier`` rounded to a multiple of 8 (at least 8).

    As MobileNets do, to keep layer widths friendly to vectorised kernels.
    """
    return max(8, round(channels * width_multiplier / 8) * 8)


class MobileNetLike(nn.Module):
    """Conv3x3 stem, 13 depthwise-separable blocks, global average pooling, one dense layer.

    Each block is a 3x3 depthwise and a 1x1 pointwise convolution, each with BatchNorm and ReLU.

    At ``width_multiplier`` 1.0 on CIFAR-10 (3x32x32, 10 classes): 3.22 M parameters, 13.0 MB of
    float32 state; the parameter count shrinks about with the multiplier's square.
    """

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, width_multiplier: float = 1.0
    ) -> None:
        super().__init__()
        # torchvision loads only for the models that use it (it costs ~2 s per process).
        from torchvision.ops import Conv2dNormActivation

        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be greater than 0, got {width_multiplier}")
        in_channels = scaled_channels(STEM_CHANNELS, width_multiplier)
        layers: list[nn.Module] = [Conv2dNormActivation(input_shape[0], in_channels, 3)]
        for channels, stride in BLOCKS:
            out_channels = scaled_channels(channels, width_multiplier)
            layers.append(
                nn.Sequential(
                    Conv2dNormActivation(in_channels, in_channels, 3, stride, groups=in_channels),
                    Conv2dNormActivation(in_channels, out_channels, 1),
                )
            )
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) of a batch of inputs (N, C, H, W)."""
        return self.classifier(self.features(x))
