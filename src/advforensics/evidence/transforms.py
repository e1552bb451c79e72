"""What happens to evidence between the attacker and the investigator: saved as 8-bit PNG, JPEG at
some quality, resized and back, or lightly noised. Every transform maps (B, C, H, W) in [0, 1] to
the same shape and range, and is deterministic given its arguments (noise takes a seed).

`reencode(x, "jpeg:90")` names a transform by a short spec, as the tracing study's rows do.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from advforensics.errors import InputValidationError


def quantise_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid, as saving a PNG does."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode each image as a baseline JPEG at `quality` (1-95) with Pillow and decode it again."""
    from PIL import Image

    if not 1 <= int(quality) <= 95:
        raise InputValidationError(f"JPEG quality must be in 1..95, got {quality}")
    out = []
    for image in (quantise_8bit(x) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy():  # (H, W, C)
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(pil.mode))
        out.append(decoded.reshape(image.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def resize_roundtrip(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize by `scale` (bilinear, antialiased) and back to the original size, then 8-bit."""
    h, w = x.shape[-2:]
    small = (max(1, round(h * scale)), max(1, round(w * scale)))
    down = F.interpolate(x, size=small, mode="bilinear", antialias=True, align_corners=False)
    return quantise_8bit(F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False))


def gaussian_noise(x: torch.Tensor, sd: float, seed: int = 0) -> torch.Tensor:
    """Add N(0, sd^2) noise per pixel and clip to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return (x + sd * torch.randn(x.shape, generator=gen)).clamp(0, 1)


#: Short specs the tracing study and the CLI accept, with one example each.
REENCODINGS = {"none": "as crafted", "png": "8-bit PNG", "jpeg:Q": "JPEG quality Q (e.g. jpeg:90)",
               "resize:S": "resized by S and back (e.g. resize:0.75)", "noise:SD": "Gaussian noise, sd in /255 (e.g. noise:2)"}


def reencode(x: torch.Tensor, spec: str, seed: int = 0) -> torch.Tensor:
    """Apply the transform named by `spec` (see REENCODINGS)."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "none" and not arg:
            return x
        if kind == "png" and not arg:
            return quantise_8bit(x)
        if kind == "jpeg":
            return jpeg(x, int(arg))
        if kind == "resize":
            return resize_roundtrip(x, float(arg))
        if kind == "noise":
            return quantise_8bit(gaussian_noise(x, float(arg) / 255, seed))
    except ValueError:
        pass
    raise InputValidationError(f"unknown re-encoding {spec!r}; use one of {', '.join(REENCODINGS)}")


def check_reencoding(spec: str) -> None:
    """Raise InputValidationError unless `spec` names a transform (tried on one blank image)."""
    reencode(torch.zeros(1, 1, 8, 8), spec)
