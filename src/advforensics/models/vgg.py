"""VGG-16 and VGG-19 with batch norm (Simonyan & Zisserman 2015), width-scalable.

width 1.0 = the paper's 64-128-256-512-512 channels. Inputs above 16 px start with a stride-2
first conv (28 -> 14: a 4x cheaper CPU run); the five max pools are kept only while the map is at
least 2 px wide, so 8x8 inputs still work (8 -> 4 -> 2 -> 1, then no more pooling).
The head is global average pooling + a 2-layer MLP (the CIFAR-style VGG head), so any input size
maps to the same parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advforensics.models.base import ModelConfig, ZooModel, as_input, register_model, scaled
from advforensics.models.layers import init_weights, stage_outputs

_CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(ZooModel):
    def __init__(self, config: ModelConfig, cfg: list[int | str]) -> None:
        super().__init__(config)
        stage: list[nn.Module] = []
        stages: list[nn.Sequential] = []
        in_ch, size = config.in_channels, config.image_size
        first = True
        for item in cfg:
            if item == "M":
                if size >= 2:
                    stage.append(nn.MaxPool2d(2, ceil_mode=True))
                    size = math.ceil(size / 2)
                stages.append(nn.Sequential(*stage))
                stage = []
            else:
                out_ch = scaled(int(item), config.width)
                # Inputs above 16 px: the first conv strides 2 (28 -> 14), a 4x cheaper CPU run.
                stride = 2 if first and config.image_size > 16 else 1
                first = False
                if stride == 2:
                    size = math.ceil(size / 2)
                stage += [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                          nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
                in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        hidden = scaled(512, config.width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_ch, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(0.3), nn.Linear(hidden, config.num_classes))
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the five conv stages (after each pool): 5 tensors (B, C_i, H_i, W_i)."""
        return stage_outputs(as_input(x), self.stages)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.forward_features(x)[-1]))


@register_model("vgg16", default_width=0.25, description="VGG-16 with batch norm")
def vgg16(config: ModelConfig) -> ZooModel:
    return VGG(config, _CFGS["vgg16"])


@register_model("vgg19", default_width=0.25, description="VGG-19 with batch norm")
def vgg19(config: ModelConfig) -> ZooModel:
    return VGG(config, _CFGS["vgg19"])
