"""The model zoo's contract: a config dataclass, one registry, and the factory others call.

Every zoo model takes (B, C, H, W) images in [0, 1] (any float dtype; cast to float32 inside
forward because ART's hard-label attacks hand in float64) and returns logits (B, num_classes).
`width` multiplies the channel counts of the published architecture (1.0 = the paper's channels);
each model registers a small default width so that it trains on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.registry import Registry


# Zoo architecture revision. 1: ResNet stems took 28 px inputs to 7 px; 2: ResNet-18/50 stems keep
# 28 px inputs at 14 px (more accurate). Cards written before revisions existed read as 1, so old
# weights are rebuilt with the stem they were trained with (same tensor shapes, different maps).
CURRENT_REVISION = 2


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a zoo model's architecture (stored in every weights card)."""

    name: str
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    width: float = 1.0
    revision: int = CURRENT_REVISION
    # resolution of the first stage where the architecture lets one choose it (ResNets); 0: its
    # default (~16 px). 32 keeps CIFAR-10 at full resolution: at width 0.25 it costs what width 0.5
    # at 16 px does, and is more accurate (docs/paper-scale.md).
    stage1_px: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.stage1_px:  # cards written before the option existed keep their exact form
            del out["stage1_px"]
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ModelConfig:
        try:
            return cls(name=str(payload["name"]), num_classes=int(payload["num_classes"]),
                       in_channels=int(payload["in_channels"]), image_size=int(payload["image_size"]),
                       width=float(payload["width"]), revision=int(payload.get("revision", 1)),
                       stage1_px=int(payload.get("stage1_px", 0)))
        except (KeyError, TypeError, ValueError) as error:
            raise InputValidationError(f"invalid model config {payload!r}: {error}") from None


class ZooModel(nn.Module):
    """Base class: holds `.config` and casts inputs to float32 before `_forward`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        # Shape checks cost nothing and turn torch's shape errors into one that names the contract;
        # range and NaN checks live where user data enters (training, evaluation, attacks).
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels or tuple(x.shape[2:]) != (c.image_size, c.image_size):
            raise InputValidationError(
                f"{c.name} expects images (B, {c.in_channels}, {c.image_size}, {c.image_size}), got {tuple(x.shape)}")
        return self._forward(as_input(x))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def as_input(x: torch.Tensor) -> torch.Tensor:
    """float32 with standard (N, C, H, W) strides.

    Why: ART passes float64; and a batch whose strides look channels-last (e.g. (64, 1, 8, 1) for
    (N, 1, 8, 8) from a NumPy transpose) sends torch 2.13's CPU convolutions down a channels-last
    path that was seen to crash (heap corruption) and to be non-deterministic with few channels.
    """
    x = x.float()
    if x.dim() == 4 and x.stride() != _standard_strides(x.shape):
        x = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
    return x


def _standard_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the builder and the default width used when the caller gives none."""

    builder: Callable[[ModelConfig], ZooModel]
    default_width: float
    description: str
    chooses_stage1_px: bool = False  # honours ModelConfig.stage1_px


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, default_width: float, description: str, chooses_stage1_px: bool = False
                   ) -> Callable[[Callable[[ModelConfig], ZooModel]], Callable[[ModelConfig], ZooModel]]:
    """Decorator: register a builder `f(ModelConfig) -> ZooModel` under `name`."""

    def decorator(builder: Callable[[ModelConfig], ZooModel]) -> Callable[[ModelConfig], ZooModel]:
        MODELS.register(name)(ModelSpec(builder, default_width, description, chooses_stage1_px))
        return builder

    return decorator


def scaled(channels: int, width: float) -> int:
    """Channel count of a layer at a width multiplier (at least 4 so BatchNorm stays meaningful)."""
    return max(4, int(round(channels * width)))


def build_model(config: ModelConfig, seed: int | None = None) -> ZooModel:
    """Build from a full config; `seed` makes the initial weights reproducible without touching
    the caller's global RNG."""
    spec = MODELS.get(config.name)
    _check_config(config)
    if config.stage1_px and not spec.chooses_stage1_px:
        raise InputValidationError(f"{config.name} has a fixed stem; a first-stage resolution is for "
                                   f"{', '.join(n for n in MODELS.names() if MODELS.get(n).chooses_stage1_px)}")
    if seed is None:
        model = spec.builder(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = spec.builder(config)
    return model


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 width: float | None = None, seed: int | None = None, stage1_px: int = 0) -> ZooModel:
    """Build a zoo model by name; width None means the model's registered (CPU-sized) default.

    The returned module has `.config: ModelConfig`; input (B, C, H, W) in [0, 1], output logits
    (B, num_classes). Unknown names raise UnknownNameError; impossible sizes InputValidationError.
    """
    spec = MODELS.get(name)
    config = ModelConfig(name=str(name).lower(), num_classes=num_classes, in_channels=in_channels,
                         image_size=image_size, width=spec.default_width if width is None else float(width),
                         stage1_px=stage1_px)
    return build_model(config, seed=seed)


def default_width(name: str) -> float:
    return MODELS.get(name).default_width


def list_models() -> list[str]:
    return MODELS.names()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_config(config: ModelConfig) -> None:
    if not isinstance(config.num_classes, int) or config.num_classes < 2:
        raise InputValidationError(f"num_classes must be an integer >= 2, got {config.num_classes!r}")
    if config.in_channels not in (1, 3):
        raise InputValidationError(f"in_channels must be 1 or 3, got {config.in_channels!r}")
    if not isinstance(config.image_size, int) or not 8 <= config.image_size <= 512:
        raise InputValidationError(f"image_size must be an integer in [8, 512], got {config.image_size!r}")
    if config.revision not in (1, CURRENT_REVISION):
        raise InputValidationError(f"unknown zoo architecture revision {config.revision!r}")
    if not isinstance(config.stage1_px, int) or not (config.stage1_px == 0 or 4 <= config.stage1_px <= config.image_size):
        raise InputValidationError(f"stage1_px must be 0 (the default) or in [4, image_size], got {config.stage1_px!r}")
    if not (0.0 < config.width <= 4.0):
        raise InputValidationError(f"width must be in (0, 4], got {config.width!r}")
