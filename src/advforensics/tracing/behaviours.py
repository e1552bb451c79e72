"""Attacker behaviours after the attack proper: what a buyer does with an example before it reaches
the investigator. The seller simulates them on its own copies to fit the learned rule, and the
tracing study reports each one as its own row.

- minimal: the example as the attack returned it (on, or just past, its copy's boundary);
- transfer-seeking: the smallest push along the perturbation, x0 + s (x_adv - x0) with s >= 1, that
  also fools k other copies (k = 1, or all of them): the examples that hurt other buyers;
- overshoot: a fixed push s past the boundary;
- low-pass: the attacker who knows the scheme blurs the perturbation (a box filter) to wash out the
  tracer's fine structure, then pushes until his own copy is fooled again.

Re-encodings (PNG, JPEG, resizing, noise) are in advforensics.evidence.transforms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.tracing.copies import CopySet

MAX_PUSH = 8.0  # beyond this the example is no longer "the attack's" perturbation


def along(x0: torch.Tensor, x_adv: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x0 + s (x_adv - x0), clipped to [0, 1]; s (B,)."""
    return (x0 + s.view(-1, 1, 1, 1) * (x_adv - x0)).clamp(0, 1)


@torch.no_grad()
def smallest_push(fools: callable, x0: torch.Tensor, x_adv: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """Smallest s in [1, MAX_PUSH] with fools(along(x0, x_adv, s)) true, by doubling then bisection;
    (B,) with NaN where even MAX_PUSH does not fool. `fools`: x (B, ...) -> (B,) bool."""
    lo = torch.ones(len(x0))
    hi = torch.ones(len(x0))
    done = fools(x_adv)
    hi[~done] = float("nan")
    s = 1.0
    while s < MAX_PUSH and bool((~done).any()):
        s = min(2 * s, MAX_PUSH)
        now = fools(along(x0, x_adv, torch.full((len(x0),), s))) & ~done
        hi[now] = s
        lo[~done & ~now] = s
        done |= now
    todo = torch.isfinite(hi) & (hi > lo)
    for _ in range(steps):
        if not bool(todo.any()):
            break
        mid = torch.where(todo, (lo + hi) / 2, hi)
        ok = fools(along(x0, x_adv, torch.nan_to_num(mid, nan=1.0)))
        hi = torch.where(todo & ok, mid, hi)
        lo = torch.where(todo & ~ok, mid, lo)
    return hi


def transfer_seeking(copies: CopySet, source: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor,
                     labels: torch.Tensor, others: int | None = 1,
                     margin: float = 1.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Push each example until it fools at least `others` copies besides its source (None: all of
    them), then `margin` further. source (B,), -1 where no copy is the source (a control); labels
    (B,) the clean labels.
    Returns (examples (B, C, H, W), reached (B,) bool)."""
    m = copies.num_copies
    need = m - 1 if others is None else int(others)
    if not 1 <= need <= m - 1:
        raise InputValidationError(f"others: must be in 1..{m - 1} or None (all), got {others}")
    not_source = torch.ones(len(source), m, dtype=torch.bool)
    mine = source >= 0
    not_source[mine.nonzero().squeeze(1), source[mine]] = False

    def fools(x: torch.Tensor) -> torch.Tensor:
        wrong = copies.labels(x) != labels.unsqueeze(1)  # (B, m)
        return (wrong & not_source).sum(1) >= need

    s = smallest_push(fools, x0, x_adv)
    reached = torch.isfinite(s)
    return along(x0, x_adv, torch.nan_to_num(s, nan=1.0) * margin), reached


def low_pass(model: nn.Module, x0: torch.Tensor, x_adv: torch.Tensor, labels: torch.Tensor,
             kernel: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur the perturbation with a kernel x kernel box filter, then push until `model` (the
    attacker's own copy) is fooled again. Returns (examples, reached (B,) bool)."""
    c = x0.shape[1]
    weight = torch.full((c, 1, kernel, kernel), 1.0 / kernel ** 2)
    blurred = x0 + F.conv2d(x_adv - x0, weight, padding=kernel // 2, groups=c)

    def fools(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x).argmax(1) != labels

    s = smallest_push(fools, x0, blurred)
    reached = torch.isfinite(s)
    return along(x0, blurred, torch.nan_to_num(s, nan=1.0) * 1.001), reached
