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



#: Per-copy features of `copy_features`, in order (the learned rule's inputs; see learned.py).
COPY_FEATURES = ("log_gap", "log_gap_rel", "pair_diff", "pair_gap", "own_dir", "own_dir_rel",
                 "fooled", "dol", "third_class", "pair_diff_above", "pair_diff_below")
#: Features shared by all copies of one example.
CONTEXT_FEATURES = ("log_c_gap", "c_gap", "share_fooled", "min_log_gap", "c_top", "all_agree")


def _log_units(gap: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.log10(gap.clamp_min(0) / alpha + 1e-6)


def _others_extreme(values: torch.Tensor, largest: bool) -> torch.Tensor:
    """values (B, m) -> for each copy, the max (or min) over the OTHER copies (B, m)."""
    m = values.shape[1]
    fill = float("-inf") if largest else float("inf")
    expanded = values.unsqueeze(1).expand(-1, m, -1).clone()  # (B, m, m)
    expanded[:, torch.arange(m), torch.arange(m)] = fill
    return expanded.amax(2) if largest else expanded.amin(2)


@torch.no_grad()
def copy_features(copies: CopySet, x: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """What the learned rule reads, from ONE shared pass: x (B, C, H, W) ->
    (per-copy features (B, m, len(COPY_FEATURES)), context (B, len(CONTEXT_FEATURES))).
    `features_and_rules` also returns every formula rule's scores from the same pass.
"""
    features, context, _ = features_and_rules(copies, x, batch_size)
    return features, context


@torch.no_grad()
def features_and_rules(copies: CopySet, x: torch.Tensor,
                       batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`copy_features` and {rule: (B, m)} of every formula rule, from one shared pass.

    Two kinds of evidence, because attackers leave the boundary in two ways:
    - boundary-type (log_gap: how close copy i's top-2 scores are, in alpha units, log scale):
      exact when the example sits on its copy's boundary (as crafted, rounded, JPEG'd back);
    - direction-type (own_dir, pair_diff: the tracer difference of copy i between its label and
      C's best other class, or between C's top-2): what remains when the example was pushed through
      the boundary so that every copy is fooled; the source's tracer is the one the attack rode.
    C's own top-2 gap and the share of copies fooled tell the regime apart."""
    c, h, w = copies.tracer.input_shape
    check_images(x, "examples", channels=c, size=(h, w))
    alpha = float(copies.params.alpha)
    feats, ctxs = [], []
    rules: dict[str, list[torch.Tensor]] = {rule: [] for rule in FORMULA_RULES}
    for chunk in x.split(batch_size):
        probs, t0 = copies.shared_pass(chunk)  # (B, K), (B, K)
        traced = copies.traced_outputs(t0)  # (B, m, K)
        scores = probs.unsqueeze(1) + alpha * traced  # (B, m, K)
        b, m, k = scores.shape
        top2 = scores.topk(2, dim=2)
        gap = top2.values[..., 0] - top2.values[..., 1]  # (B, m)
        label = top2.indices[..., 0]  # (B, m)
        log_gap = _log_units(gap, alpha)
        c_top2 = probs.topk(2, dim=1)
        c1, c2 = c_top2.indices[:, 0], c_top2.indices[:, 1]  # (B,)
        c_gap = c_top2.values[:, 0] - c_top2.values[:, 1]  # (B,)
        at = lambda cls: traced.gather(2, cls.view(b, 1, 1).expand(b, m, 1)).squeeze(2)  # noqa: E731
        pair_diff = at(c1) - at(c2)  # (B, m)
        pair_gap = (c_gap.unsqueeze(1) + alpha * pair_diff) / alpha
        # C's best class other than copy i's label
        masked = probs.unsqueeze(1).expand(b, m, k).scatter(2, label.unsqueeze(2), float("-inf"))
        rival = masked.argmax(2)  # (B, m)
        own_dir = traced.gather(2, label.unsqueeze(2)).squeeze(2) - traced.gather(2, rival.unsqueeze(2)).squeeze(2)
        dol = dol_from_scores(scores, traced)
        rules["dol"].append(dol)
        rules["margin"].append(margin_from_scores(scores, probs))
        rules["proximity"].append(-gap)
        fooled = (label != c1.unsqueeze(1)).float()
        third = ((label != c1.unsqueeze(1)) & (label != c2.unsqueeze(1))).float()
        feats.append(torch.stack([
            log_gap, log_gap - log_gap.amin(1, keepdim=True), pair_diff, pair_gap.clamp(-20, 20), own_dir,
            own_dir - _others_extreme(own_dir, True), fooled, dol, third,
            pair_diff - _others_extreme(pair_diff, True), pair_diff - _others_extreme(pair_diff, False)], dim=2))
        ctxs.append(torch.stack([
            _log_units(c_gap, alpha), (c_gap / alpha).clamp(max=20), fooled.mean(1), log_gap.amin(1),
            c_top2.values[:, 0], (label == label[:, :1]).all(1).float()], dim=1))
    if not feats:
        m = copies.num_copies
        return (torch.empty(0, m, len(COPY_FEATURES)), torch.empty(0, len(CONTEXT_FEATURES)),
                {rule: torch.empty(0, m) for rule in FORMULA_RULES})
    return torch.cat(feats), torch.cat(ctxs), {rule: torch.cat(parts) for rule, parts in rules.items()}
