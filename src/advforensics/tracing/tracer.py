"""Tracers: networks T_0 mapping images (B, C, H, W) in [0, 1] to (B, K) outputs in [-1, 1].

Every tracer kind shares one interface (`Tracer`), is registered in `TRACERS`, and is saved as
safetensors with its kind and constructor config in its card (advforensics.weights), so that variants can be
compared on the same copies, attacks and examples.

Kinds:
- "random": the smooth random tracer of the lab notes, random Fourier features
  T_0(x) = tanh(g * W2 @ sin(W1 @ x_flat + b)), W1 ~ N(0, 1/l^2), b ~ U(0, 2 pi), W2 ~ N(0, 2/D).
  Untrained, deterministic from a seed; l sets the length scale on which outputs change, g keeps
  them out of saturation (saturated outputs create DOL ties, lab-notes pitfall 3).
- "vae": the paper's tracer, the encoder of a VAE (Conv-BN-ReLU, two residual blocks, a conv block,
  FC, tanh), trained with the trap loss (training.py). Its first K/2 outputs are the VAE's mu and
  the last K/2 its log-variance (a bounded reading of the paper's "sigma"; see `VAETracer.encode`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from advforensics.errors import AdvForensicsError, CheckpointError, InputValidationError
from advforensics.registry import Registry
from advforensics.utils import check_images
from advforensics.weights import load_weights, save_weights, state_tensors


class Tracer(nn.Module):
    """Base class: `kind`, `config` (a dataclass) and `forward(x) -> (B, K)` in [-1, 1]."""

    kind: ClassVar[str]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def num_outputs(self) -> int:
        return int(self.config.num_outputs)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (int(self.config.in_channels), int(self.config.image_size[0]), int(self.config.image_size[1]))

    def check_input(self, x: torch.Tensor) -> None:
        c, h, w = self.input_shape
        check_images(x, "x", channels=c, size=(h, w))

    def content_hash(self) -> str:
        """sha256 over the kind, config and every tensor of the state dict (sorted by name)."""
        return state_hash(self, extra={"kind": self.kind, "config": asdict(self.config)})


TRACERS: Registry[type[Tracer]] = Registry("tracer")


def state_hash(module: nn.Module, extra: dict[str, Any] | None = None) -> str:
    """A stable content hash of a module's parameters and buffers (names, dtypes, shapes, bytes)."""
    import hashlib

    digest = hashlib.sha256()
    if extra is not None:
        digest.update(json.dumps(extra, sort_keys=True).encode())
    for name, tensor in sorted(module.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(array.numpy().tobytes() if array.dtype != torch.bfloat16 else array.float().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- random tracer
@dataclass
class RandomTracerConfig:
    num_outputs: int = 10
    in_channels: int = 1
    image_size: tuple[int, int] = (28, 28)
    num_features: int = 1024  # D, the random Fourier features
    length_scale: float = 1.5  # l: outputs change on this L2 distance in pixel space
    gain: float = 0.8  # g: keeps tanh out of saturation
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_common(self.num_outputs, self.in_channels, self.image_size)
        if self.num_features < 1:
            raise InputValidationError("num_features: must be >= 1")
        if not (self.length_scale > 0 and math.isfinite(self.length_scale)):
            raise InputValidationError("length_scale: must be a positive number")
        if not (self.gain > 0 and math.isfinite(self.gain)):
            raise InputValidationError("gain: must be a positive number")


@TRACERS.register("random")
class RandomFeatureTracer(Tracer):
    """Untrained smooth random function; weights are buffers drawn from `config.seed`."""

    kind = "random"

    def __init__(self, config: RandomTracerConfig | None = None, **kwargs: Any) -> None:
        config = config or RandomTracerConfig(**_tuple_size(kwargs))
        super().__init__(config)
        c, h, w = self.input_shape
        d = c * h * w
        gen = torch.Generator().manual_seed(int(config.seed))
        self.register_buffer("w1", torch.randn(config.num_features, d, generator=gen) / config.length_scale)  # (D, d)
        self.register_buffer("b1", torch.rand(config.num_features, generator=gen) * 2 * math.pi)  # (D,)
        self.register_buffer("w2", torch.randn(config.num_outputs, config.num_features, generator=gen)
                             * math.sqrt(2.0 / config.num_features))  # (K, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.float().flatten(1)  # (B, d)
        features = torch.sin(flat @ self.w1.T + self.b1)  # (B, D)
        return torch.tanh(self.config.gain * features @ self.w2.T)  # (B, K)


# ----------------------------------------------------------------------------- VAE tracer
@dataclass
class VAETracerConfig:
    num_outputs: int = 10  # K; must be even (K/2 mu, K/2 log-variance)
    in_channels: int = 1
    image_size: tuple[int, int] = (28, 28)
    width: int = 32  # channels of the first conv; later stages use 2x
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_common(self.num_outputs, self.in_channels, self.image_size)
        if self.num_outputs % 2:
            raise InputValidationError("num_outputs: the VAE tracer needs an even K (K/2 mu, K/2 sigma)")
        if self.width < 1:
            raise InputValidationError("width: must be >= 1")


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with a (strided 1x1 where needed) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _half(n: int) -> int:
    return (n + 1) // 2  # output size of a stride-2, padding-1, 3x3 conv


class VAEDecoder(nn.Module):
    """Reconstructs x from z (B, K/2): FC, three double-conv blocks, two upsample-conv-BN-ReLU
    blocks, a final conv block to C channels (sigmoid, pixels in [0, 1])."""

    def __init__(self, config: VAETracerConfig) -> None:
        super().__init__()
        h, w = config.image_size
        self.h4, self.w4 = _half(_half(h)), _half(_half(w))
        ch = 2 * config.width
        self.ch = ch
        self.fc = nn.Linear(config.num_outputs // 2, ch * self.h4 * self.w4)
        self.double_convs = nn.Sequential(*[
            nn.Sequential(_conv_bn_relu(ch, ch), _conv_bn_relu(ch, ch)) for _ in range(3)
        ])
        self.up = nn.Sequential(
            nn.Upsample(size=(_half(h), _half(w)), mode="nearest"), _conv_bn_relu(ch, config.width),
            nn.Upsample(size=(h, w), mode="nearest"), _conv_bn_relu(config.width, config.width),
        )
        self.out = nn.Sequential(nn.Conv2d(config.width, config.in_channels, 3, 1, 1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        feat = self.fc(z).view(z.shape[0], self.ch, self.h4, self.w4)  # (B, 2w, H/4, W/4)
        return self.out(self.up(self.double_convs(feat)))  # (B, C, H, W)


@TRACERS.register("vae")
class VAETracer(Tracer):
    """The paper's tracer: a VAE encoder whose tanh outputs double as (mu, log-variance)."""

    kind = "vae"

    def __init__(self, config: VAETracerConfig | None = None, **kwargs: Any) -> None:
        config = config or VAETracerConfig(**_tuple_size(kwargs))
        super().__init__(config)
        torch.manual_seed(int(config.seed))
        w = config.width
        h, wd = config.image_size
        self.encoder = nn.Sequential(
            _conv_bn_relu(config.in_channels, w),
            _ResidualBlock(w, w, stride=2),
            _ResidualBlock(w, 2 * w, stride=2),
            _conv_bn_relu(2 * w, 2 * w),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * w * _half(_half(h)) * _half(_half(wd)), config.num_outputs)
        self.decoder = VAEDecoder(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(self.encoder(x.float())))  # (B, K)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (B, K/2): the first and last halves of the tracer output."""
        out = self(x)
        half = self.num_outputs // 2
        return out[:, :half], out[:, half:]

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_hat (B, C, H, W), mu, logvar) with one reparameterised sample z = mu + eps * sigma."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


# ----------------------------------------------------------------------------- factory and I/O
_CONFIGS: dict[str, type] = {"random": RandomTracerConfig, "vae": VAETracerConfig}


def create_tracer(kind: str, **params: Any) -> Tracer:
    """Build a registered tracer kind with its config fields as keyword arguments."""
    cls = TRACERS.get(kind)
    config_cls = _CONFIGS[cls.kind]
    known = set(config_cls.__dataclass_fields__)
    unknown = set(params) - known
    if unknown:
        raise InputValidationError(f"unknown {kind} tracer parameter(s): {sorted(unknown)}; known: {sorted(known)}")
    return cls(config_cls(**_tuple_size(params)))


def list_tracers() -> list[str]:
    return TRACERS.names()


TRACER_FORMAT = "advforensics-tracer/2"


def save_tracer(tracer: Tracer, path: str | Path) -> str:
    """Write the tracer (advforensics.weights: weights + kind, config and content hash in the card);
    return its content hash."""
    digest = tracer.content_hash()
    save_weights(path, state_tensors(tracer), {"format": TRACER_FORMAT, "kind": tracer.kind,
                                               "config": asdict(tracer.config), "hash": digest})
    return digest


def load_tracer(path: str | Path, expected_hash: str | None = None) -> Tracer:
    """Load a tracer written by `save_tracer`; a missing, corrupt or tampered file -> CheckpointError."""
    source = Path(path)
    tensors, card = load_weights(source, TRACER_FORMAT, "tracer")
    try:
        tracer = create_tracer(card["kind"], **card["config"])
        tracer.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError, KeyError, TypeError, AdvForensicsError) as error:
        raise CheckpointError(f"tracer file {source} does not match its config: {error}") from None
    tracer.eval()
    digest = tracer.content_hash()
    if card.get("hash") != digest:
        raise CheckpointError(f"tracer file {source} fails its content hash (tampered or corrupt)")
    if expected_hash is not None and digest != expected_hash:
        raise CheckpointError(f"tracer file {source} is not the tracer this record was made with")
    return tracer


def _check_common(num_outputs: int, in_channels: int, image_size: tuple[int, int]) -> None:
    if num_outputs < 2:
        raise InputValidationError("num_outputs: must be >= 2")
    if in_channels < 1:
        raise InputValidationError("in_channels: must be >= 1")
    if len(image_size) != 2 or min(image_size) < 1:
        raise InputValidationError("image_size: must be (H, W) with H, W >= 1")


def _tuple_size(params: dict[str, Any]) -> dict[str, Any]:
    params = dict(params)
    if "image_size" in params:
        size = params["image_size"]
        params["image_size"] = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    return params
