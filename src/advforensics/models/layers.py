"""Building blocks shared by the zoo's architectures."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int | tuple[int, int] = 3, stride: int = 1,
                 padding: int | tuple[int, int] | None = None) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU; 'same' padding by default."""
    if padding is None:
        padding = (kernel // 2) if isinstance(kernel, int) else (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def stem_halvings(image_size: int, target: int = 8) -> int:
    """How many times a stem halves the input so the first stage runs at about `target` px.

    8x8 inputs keep full resolution (0), 28/32 px go to 7/8 px (2, as ImageNet ResNets take 224 to
    56 and then to 7), 224 px to 7 px (5). This keeps CPU training cheap and lets 8x8 inputs work.
    """
    return max(0, math.ceil(math.log2(image_size / target))) if image_size > target else 0


def make_stem(in_ch: int, out_ch: int, image_size: int, target: int = 8) -> nn.Sequential:
    """A conv stem: stride-2 conv for the first halving, then max pools for the rest (3x3 conv for
    small inputs, 7x7 for inputs above 64 px as in ImageNet ResNets). `target` is the resolution
    the first stage should run at (`stem_halvings`): 8 is cheapest, 16 keeps 28 px digits at 14 px
    (one stride-2 conv, no pool), which costs ~4x the compute but is more accurate."""
    halvings = stem_halvings(image_size, target)
    kernel = 7 if image_size > 64 else 3
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, 2 if halvings else 1, kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    ]
    layers += [nn.MaxPool2d(3, 2, 1) for _ in range(max(0, halvings - 1))]
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """He init for convs, unit BatchNorm, small normal for linear layers (torchvision habit)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def stage_outputs(x: torch.Tensor, stages: Iterable[nn.Module]) -> list[torch.Tensor]:
    """Run `stages` in sequence and keep each one's output, shallow to deep (forward_features)."""
    features = []
    for stage in stages:
        x = stage(x)
        features.append(x)
    return features
