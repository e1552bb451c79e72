"""Tracing score rules: one score per copy and example, (B, m), from ONE shared forward pass of C and
T_0; the source is the copy with the highest score. No clean image or label is needed.

- "dol" (the paper): att = top-1 and cln = top-2 class of M_i(x); DOL_i = T_i(x)[att] - T_i(x)[cln].
  It reads its class pair off each copy's own ranking, so an example that falls back across the
  source's boundary (8-bit rounding, a little noise) flips the sign of the source's DOL.
- "margin": how far copy i's decision is pushed away from C's label c = argmax C(x):
  max_{k != c} M_i(x)[k] - M_i(x)[c]. The attack pushed only its own copy across; an innocent copy's
  margin differs by alpha times a different tracer difference and is mostly negative.
- "proximity": -(top-1 minus top-2 of M_i(x)). Minimal-distance (hard-label) attacks end on their
  copy's decision boundary, where that gap is ~0; innocent copies' boundaries lie elsewhere.
  Sharpest on boundary-ending attacks; an attacker who overshoots the boundary weakens it.
- "learned" (learned.py): a scorer fitted by the seller on simulated attackers, over the per-copy
  features of `copy_features`; it also answers "none of these copies".
"""

from __future__ import annotations

import torch

from advforensics.errors import InputValidationError
from advforensics.tracing.copies import CopySet
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES
from advforensics.utils import check_images

DOL_RANGE = (-2.0, 2.0)  # tracer outputs lie in [-1, 1]


def check_rule(rule: str) -> str:
    """A formula rule's name (the learned rule is not a formula: it needs its fitted scorer)."""
    if rule not in FORMULA_RULES:
        raise InputValidationError(f"unknown score rule {rule!r}; choose one of {', '.join(FORMULA_RULES)}")
    return rule


def dol_from_scores(scores: torch.Tensor, traced: torch.Tensor) -> torch.Tensor:
    """scores M (B, m, K), tracer outputs T (B, m, K) -> DOL (B, m)."""
    top2 = scores.topk(2, dim=2).indices  # (B, m, 2): att, cln
    picked = torch.gather(traced, 2, top2)  # (B, m, 2)
    return picked[..., 0] - picked[..., 1]


def margin_from_scores(scores: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """scores M (B, m, K), C's probabilities (B, K) -> max_{k != c} M[k] - M[c] (B, m), c = argmax C."""
    c = probs.argmax(1).view(-1, 1, 1).expand(-1, scores.shape[1], 1)  # (B, m, 1)
    at_c = scores.gather(2, c).squeeze(2)
    others = scores.scatter(2, c, float("-inf"))
    return others.max(2).values - at_c


def proximity_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """scores M (B, m, K) -> -(top-1 - top-2) (B, m): 0 on a copy's decision boundary."""
    top2 = scores.topk(2, dim=2).values
    return top2[..., 1] - top2[..., 0]


@torch.no_grad()
def rule_scores(copies: CopySet, x: torch.Tensor, rules: tuple[str, ...] = FORMULA_RULES,
                batch_size: int = 4096) -> dict[str, torch.Tensor]:
    """Tracing scores under several rules from ONE shared pass: x (B, C, H, W) in [0, 1] -> {rule: (B, m)}."""
    for rule in rules:
        check_rule(rule)
    c, h, w = copies.tracer.input_shape
    check_images(x, "examples", channels=c, size=(h, w))
    if len(x) == 0:
        return {rule: torch.empty(0, copies.num_copies) for rule in rules}
    out: dict[str, list[torch.Tensor]] = {rule: [] for rule in rules}
    for chunk in x.split(batch_size):
        probs, t0 = copies.shared_pass(chunk)
        traced = copies.traced_outputs(t0)
        scores = probs.unsqueeze(1) + float(copies.params.alpha) * traced
        for rule in rules:
            if rule == "dol":
                out[rule].append(dol_from_scores(scores, traced))
            elif rule == "margin":
                out[rule].append(margin_from_scores(scores, probs))
            else:
                out[rule].append(proximity_from_scores(scores))
    return {rule: torch.cat(parts) for rule, parts in out.items()}


def copy_scores(copies: CopySet, x: torch.Tensor, rule: str = DEFAULT_RULE,
                batch_size: int = 4096) -> torch.Tensor:
    """Tracing score of every copy for every example under `rule`: x (B, C, H, W) in [0, 1] -> (B, m)."""
    return rule_scores(copies, x, (rule,), batch_size)[rule]


def dol_scores(copies: CopySet, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """The paper's DOL of every copy for every example: x (B, C, H, W) in [0, 1] -> (B, m)."""
    return copy_scores(copies, x, "dol", batch_size)

