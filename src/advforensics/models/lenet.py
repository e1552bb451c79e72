"""LeNet-style CNN (LeCun et al. 1998), with ReLU and max pooling as in most modern re-tellings.

width 1.0 = conv channels 32, 64 and a 512-unit hidden layer; the adaptive pool makes the head
independent of the input size (8x8 to 224x224).
"""

from __future__ import annotations

import torch
from torch import nn

from advforensics.models.base import ModelConfig, ZooModel, as_input, register_model, scaled


class LeNet(ZooModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        c1, c2, hidden = scaled(32, config.width), scaled(64, config.width), scaled(512, config.width)
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d((4, 4))  # 28 -> 7 -> (4, 4); 8 -> 2 -> (4, 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(inplace=True), nn.Dropout(0.25),
            nn.Linear(hidden, config.num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each conv stage: [(B, c1, H/2, W/2), (B, c2, H/4, W/4)]."""
        x = as_input(x)
        out = []
        for i in (0, 3):
            x = self.features[i + 2](self.features[i + 1](self.features[i](x)))
            out.append(x)
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


@register_model("lenet", default_width=0.5, description="LeNet-style CNN: 2 conv + 2 dense layers")
def lenet(config: ModelConfig) -> ZooModel:
    return LeNet(config)
