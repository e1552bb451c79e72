"""ResNet-18 and ResNet-50 (He et al. 2016), width-scalable, for inputs from 8x8 to 224x224.

width 1.0 = the paper's stage widths 64-128-256-512 (x4 for ResNet-50's bottleneck outputs).
The stem brings the input to about 16 px (`layers.stem_halvings`: 8x8 stays 8x8, 28x28 -> 14x14 via
a stride-2 3x3 conv, 224x224 -> 14x14 via a 7x7 stride-2 conv + 3 max pools); stages 2-4 halve the
resolution again (ceil), so 8x8 ends at 1x1. Cards of architecture revision 1 (written before
2026-11-21 08:00 UTC) rebuild the older stem to about 8 px (28 -> 7 via conv + max pool).

`forward_features(x)` returns the four stage outputs [(B, C1, H1, W1), ..., (B, C4, H4, W4)], so a
frozen backbone's feature maps can be read without hooks (used by attribution).
"""

from __future__ import annotations

import torch
from torch import nn

from advforensics.models.base import ModelConfig, ZooModel, as_input, register_model, scaled
from advforensics.models.layers import init_weights, make_stem, stage_outputs


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class ResNet(ZooModel):
    def __init__(self, config: ModelConfig, block: type[BasicBlock] | type[Bottleneck],
                 layers: tuple[int, int, int, int], stem_target: int = 8) -> None:
        super().__init__(config)
        widths = [scaled(c, config.width) for c in (64, 128, 256, 512)]
        self.stem = make_stem(config.in_channels, widths[0], config.image_size, stem_target)
        in_ch = widths[0]
        stages = []
        for i, (planes, count) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, planes, stride))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, config.num_classes)
        self.feature_channels = [w * block.expansion for w in widths]
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stage feature maps, shallow to deep: 4 tensors (B, C_i, H_i, W_i)."""
        return stage_outputs(self.stem(as_input(x)), self.stages)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.forward_features(x)[-1]  # (B, C4, H4, W4)
        return self.fc(torch.flatten(self.pool(last), 1))  # (B, num_classes)


def _stem_target(config: ModelConfig) -> int:
    """Revision 2 runs the first stage at ~16 px (28 px digits at 14x14: one stride-2 conv, no
    pool), which lifted ResNet-18 from 99.13% to the 99.3% MNIST bar; revision 1 ran it at ~8 px.
    A card's stage1_px chooses it (32: CIFAR-10 at full resolution)."""
    if config.stage1_px:
        return config.stage1_px
    return 16 if config.revision >= 2 else 8


@register_model("resnet18", default_width=0.25, description="ResNet-18 (basic blocks 2-2-2-2)", chooses_stage1_px=True)
def resnet18(config: ModelConfig) -> ZooModel:
    return ResNet(config, BasicBlock, (2, 2, 2, 2), stem_target=_stem_target(config))


@register_model("resnet50", default_width=0.25, description="ResNet-50 (bottleneck blocks 3-4-6-3)",
                chooses_stage1_px=True)
def resnet50(config: ModelConfig) -> ZooModel:
    return ResNet(config, Bottleneck, (3, 4, 6, 3), stem_target=_stem_target(config))
