"""An Inception-v3-style network (Szegedy et al. 2016), width-scalable, for 8x8 to 224x224 inputs.

Keeps v3's ideas -- parallel 1x1 / 5x5 / double-3x3 / pool branches (block A), grid reductions
that concatenate a strided conv with a pooled branch (B, D), factorised 1x7 + 7x1 convolutions (C)
and the expanded 1x3 / 3x1 filter bank (E) -- with one block of each kind after two A blocks.
width 1.0 = v3's channel counts (A: 256/288, C: 768, E: 2048 output channels).
The stem brings the input to about 16 px as v3's stem takes 299 to 35 (`layers.stem_halvings`;
28 -> 14; architecture revision 1 went to about 8 px, 28 -> 7).
Reductions pad so that an 8x8 input shrinks 8 -> 4 -> 2 instead of vanishing.
"""

from __future__ import annotations

import torch
from torch import nn

from advforensics.models.base import ModelConfig, ZooModel, as_input, register_model, scaled
from advforensics.models.layers import conv_bn_relu as cbr
from advforensics.models.layers import init_weights, make_stem, stage_outputs


class BlockA(nn.Module):
    def __init__(self, in_ch: int, w: float, pool_features: int) -> None:
        super().__init__()
        self.b1 = cbr(in_ch, scaled(64, w), 1)
        self.b5 = nn.Sequential(cbr(in_ch, scaled(48, w), 1), cbr(scaled(48, w), scaled(64, w), 5))
        self.b3 = nn.Sequential(cbr(in_ch, scaled(64, w), 1), cbr(scaled(64, w), scaled(96, w), 3),
                                cbr(scaled(96, w), scaled(96, w), 3))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(in_ch, scaled(pool_features, w), 1))
        self.out_channels = scaled(64, w) * 2 + scaled(96, w) + scaled(pool_features, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b5(x), self.b3(x), self.bp(x)], 1)


class BlockB(nn.Module):
    """Grid reduction 35 -> 17 in v3; here H -> ceil(H / 2)."""

    def __init__(self, in_ch: int, w: float) -> None:
        super().__init__()
        self.b3 = cbr(in_ch, scaled(384, w), 3, stride=2, padding=1)
        self.b3d = nn.Sequential(cbr(in_ch, scaled(64, w), 1), cbr(scaled(64, w), scaled(96, w), 3),
                                 cbr(scaled(96, w), scaled(96, w), 3, stride=2, padding=1))
        self.bp = nn.MaxPool2d(3, 2, 1)
        self.out_channels = scaled(384, w) + scaled(96, w) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.b3d(x), self.bp(x)], 1)


class BlockC(nn.Module):
    """Factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_ch: int, w: float, c7: int) -> None:
        super().__init__()
        c7, c192 = scaled(c7, w), scaled(192, w)
        self.b1 = cbr(in_ch, c192, 1)
        self.b7 = nn.Sequential(cbr(in_ch, c7, 1), cbr(c7, c7, (1, 7)), cbr(c7, c192, (7, 1)))
        self.b7d = nn.Sequential(cbr(in_ch, c7, 1), cbr(c7, c7, (7, 1)), cbr(c7, c7, (1, 7)),
                                 cbr(c7, c7, (7, 1)), cbr(c7, c192, (1, 7)))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(in_ch, c192, 1))
        self.out_channels = 4 * c192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b7(x), self.b7d(x), self.bp(x)], 1)


class BlockD(nn.Module):
    """Grid reduction 17 -> 8 in v3; here H -> ceil(H / 2)."""

    def __init__(self, in_ch: int, w: float) -> None:
        super().__init__()
        c192 = scaled(192, w)
        self.b3 = nn.Sequential(cbr(in_ch, c192, 1), cbr(c192, scaled(320, w), 3, stride=2, padding=1))
        self.b7 = nn.Sequential(cbr(in_ch, c192, 1), cbr(c192, c192, (1, 7)), cbr(c192, c192, (7, 1)),
                                cbr(c192, c192, 3, stride=2, padding=1))
        self.bp = nn.MaxPool2d(3, 2, 1)
        self.out_channels = scaled(320, w) + c192 + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b3(x), self.b7(x), self.bp(x)], 1)


class BlockE(nn.Module):
    """Expanded filter bank: 1x3 and 3x1 branches side by side."""

    def __init__(self, in_ch: int, w: float) -> None:
        super().__init__()
        c384 = scaled(384, w)
        self.b1 = cbr(in_ch, scaled(320, w), 1)
        self.b3 = cbr(in_ch, c384, 1)
        self.b3a, self.b3b = cbr(c384, c384, (1, 3)), cbr(c384, c384, (3, 1))
        self.b3d = nn.Sequential(cbr(in_ch, scaled(448, w), 1), cbr(scaled(448, w), c384, 3))
        self.b3da, self.b3db = cbr(c384, c384, (1, 3)), cbr(c384, c384, (3, 1))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), cbr(in_ch, scaled(192, w), 1))
        self.out_channels = scaled(320, w) + 4 * c384 + scaled(192, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, d = self.b3(x), self.b3d(x)
        return torch.cat([self.b1(x), self.b3a(a), self.b3b(a), self.b3da(d), self.b3db(d), self.bp(x)], 1)


class InceptionV3(ZooModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        w = config.width
        c32, c64 = scaled(32, w), scaled(64, w)
        self.stem = nn.Sequential(make_stem(config.in_channels, c32, config.image_size, _stem_target(config)), cbr(c32, c64, 3))
        a1 = BlockA(c64, w, 32)
        a2 = BlockA(a1.out_channels, w, 64)
        b = BlockB(a2.out_channels, w)
        c = BlockC(b.out_channels, w, 128)
        d = BlockD(c.out_channels, w)
        e = BlockE(d.out_channels, w)
        # Three resolution stages: full (A, A), half (B, C), quarter (D, E).
        self.stages = nn.ModuleList([nn.Sequential(a1, a2), nn.Sequential(b, c), nn.Sequential(d, e)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(e.out_channels, config.num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the three resolution stages: 3 tensors (B, C_i, H_i, W_i)."""
        return stage_outputs(self.stem(as_input(x)), self.stages)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.pool(self.forward_features(x)[-1]), 1)  # (B, C)
        return self.fc(self.dropout(pooled))


def _stem_target(config: ModelConfig) -> int:
    """Resolution (px) the A blocks run at (`layers.stem_halvings`): revision 2 keeps 28 px digits
    at 14 px, so that B-E's 5x5, 1x7 and 7x1 filters see more than 4x4 / 2x2 maps; revision 1 ran
    the A blocks at 7 px and reached 98.36% on MNIST at best."""
    return 16 if config.revision >= 2 else 8


@register_model("inception_v3", default_width=0.125, description="Inception-v3-style network")
def inception_v3(config: ModelConfig) -> ZooModel:
    return InceptionV3(config)
