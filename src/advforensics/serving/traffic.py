"""Benign traffic, as the seller simulates it: buyers sending their own images, augmented.

A benign buyer sends images from a pool (the seller's held images for calibration, test images for
measurement), each with a random small rotation, shift, contrast change and noise; with probability
`repeat_p` an image is sent again, re-augmented (test-time augmentation, retries), up to 3 more times.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, generator: torch.Generator, degrees: float = 10.0, shift: float = 0.08,
            noise: float = 0.02) -> torch.Tensor:
    """Random rotation (+-degrees), shift (+-shift of the side), contrast/brightness jitter and noise."""
    n = len(images)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift * 2  # affine_grid's [-1, 1] units
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], 1), torch.stack([sin, cos, offset[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
    contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.1
    moved = moved * contrast + brightness + noise * torch.randn(moved.shape, generator=generator)
    return moved.clamp(0.0, 1.0)


def benign_stream(pool: torch.Tensor, n_queries: int, seed: int, repeat_p: float = 0.1) -> torch.Tensor:
    """(n_queries, C, H, W): one benign buyer's queries drawn from `pool`, augmented."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=generator)
    picks: list[int] = []
    cursor = 0
    while len(picks) < n_queries:
        index = int(order[cursor % len(order)])
        cursor += 1
        repeats = 1 + (int(torch.randint(1, 4, (1,), generator=generator))
                       if float(torch.rand(1, generator=generator)) < repeat_p else 0)
        picks.extend([index] * repeats)
    return augment(pool[torch.tensor(picks[:n_queries])], generator)


def stream_sketches(stream: torch.Tensor, sketcher) -> np.ndarray:
    return sketcher(stream.numpy().astype(np.float32))


__all__ = ["augment", "benign_stream", "stream_sketches"]
