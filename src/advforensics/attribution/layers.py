"""Small ResNet building blocks for the attributors (kept here so attribution depends on no zoo model)."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convs with BN and an identity/projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H/s, W/s)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` basic blocks, the first one strided."""
    layers = [BasicBlock(c_in, c_out, stride)] + [BasicBlock(c_out, c_out, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def stem(in_channels: int, width: int) -> nn.Sequential:
    """3x3 conv stem without downsampling: attribution images are small (8x8 to 32x32)."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())


class Trunk(nn.Module):
    """Global shared layers: stem + three ResNet stages; returns (low-level, high-level) maps."""

    def __init__(self, in_channels: int, width: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = stem(in_channels, width)
        self.layer1 = stage(width, width, blocks[0], 1)
        self.layer2 = stage(width, 2 * width, blocks[1], 2)
        self.layer3 = stage(2 * width, 4 * width, blocks[2], 2)
        self.out_channels = 4 * width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.layer1(self.stem(x))  # (B, w, H, W)
        high = self.layer3(self.layer2(low))  # (B, 4w, H/4, W/4)
        return low, high


__all__ = ["BasicBlock", "stage", "stem", "Trunk"]
