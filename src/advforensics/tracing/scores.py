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
from advforensics.vocab import LearnedFeatures

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



#: Per-copy features of `copy_features`, in order (the learned rule's inputs; see learned.py). The
#: first 11 read the one shared pass; the "sq_" ones also read C's label on the squeezed example.
BASE_COPY_FEATURES = ("log_gap", "log_gap_rel", "pair_diff", "pair_gap", "own_dir", "own_dir_rel",
                      "fooled", "dol", "third_class", "pair_diff_above", "pair_diff_below")
SQUEEZED_COPY_FEATURES = ("sq_dir", "sq_dir_rel", "sq_own", "sq_pair_gap")
COPY_FEATURES = BASE_COPY_FEATURES + SQUEEZED_COPY_FEATURES
#: Features shared by all copies of one example.
BASE_CONTEXT_FEATURES = ("log_c_gap", "c_gap", "share_fooled", "min_log_gap", "c_top", "all_agree")
SQUEEZED_CONTEXT_FEATURES = ("sq_agrees", "sq_log_gap")
CONTEXT_FEATURES = BASE_CONTEXT_FEATURES + SQUEEZED_CONTEXT_FEATURES
#: Feature sets a learned rule can be fitted on (FitConfig.features). "squeezed" needs a second pass
#: of C (on the squeezed examples): about one more forward pass per example, whatever the number of
#: copies (docs/tracing.md); "base" reads the one shared pass alone.
FEATURE_SETS = {LearnedFeatures.BASE.value: (BASE_COPY_FEATURES, BASE_CONTEXT_FEATURES),
                LearnedFeatures.SQUEEZED.value: (COPY_FEATURES, CONTEXT_FEATURES)}
SQUEEZE_GAIN = 3.0  # contrast stretch about mid-grey: a small perturbation falls back to 0 or 1


def squeeze(x: torch.Tensor, gain: float = SQUEEZE_GAIN) -> torch.Tensor:
    """The example with its contrast stretched about mid-grey, ((x - 0.5) gain + 0.5) clipped to [0, 1].

    A hard-label attack's perturbation is spread thin over many pixels; stretching sends most of it
    back to black or white, so C's label on the squeezed example is the clean label far more often
    than C's label on the example itself (on the project's ART sets pushed to fool every copy: 99-100%
    against 2%). The investigator needs no clean image for it."""
    return ((x - 0.5) * gain + 0.5).clamp(0, 1)


def _log_units(gap: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.log10(gap.clamp_min(0) / alpha + 1e-6)


def _others_extreme(values: torch.Tensor, largest: bool) -> torch.Tensor:
    """values (B, m) -> for each copy, the max (or min) over the OTHER copies (B, m), in O(B m): the
    top value, except for the copy that holds it, which gets the runner-up."""
    b, m = values.shape
    if m < 2:
        return torch.full_like(values, float("-inf") if largest else float("inf"))
    top = values.topk(2, dim=1, largest=largest)
    holder = torch.arange(m, device=values.device).unsqueeze(0) == top.indices[:, :1]
    return torch.where(holder, top.values[:, 1:2], top.values[:, :1])


def _check_names(copy_names: tuple[str, ...], context_names: tuple[str, ...]) -> None:
    unknown = [n for n in copy_names if n not in COPY_FEATURES] + [n for n in context_names if n not in CONTEXT_FEATURES]
    if unknown:
        raise InputValidationError(f"unknown tracing features {unknown}")


@torch.no_grad()
def copy_features(copies: CopySet, x: torch.Tensor, batch_size: int = 4096,
                  copy_names: tuple[str, ...] = COPY_FEATURES,
                  context_names: tuple[str, ...] = CONTEXT_FEATURES) -> tuple[torch.Tensor, torch.Tensor]:
    """What the learned rule reads: x (B, C, H, W) ->
    (per-copy features (B, m, len(copy_names)), context (B, len(context_names))), in the names' order.
    `features_and_rules` also returns every formula rule's scores from the same pass.
"""
    features, context, _ = features_and_rules(copies, x, batch_size, copy_names, context_names)
    return features, context


@torch.no_grad()
def features_and_rules(copies: CopySet, x: torch.Tensor, batch_size: int = 4096,
                       copy_names: tuple[str, ...] = COPY_FEATURES,
                       context_names: tuple[str, ...] = CONTEXT_FEATURES,
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """`copy_features` and {rule: (B, m)} of every formula rule, from one shared pass (and one more
    pass of C alone on the squeezed examples when a "sq_" feature is asked for).

    Two kinds of evidence, because attackers leave the boundary in two ways:
    - boundary-type (log_gap: how close copy i's top-2 scores are, in alpha units, log scale):
      exact when the example sits on its copy's boundary (as crafted, rounded, JPEG'd back);
    - direction-type (own_dir, pair_diff: the tracer difference of copy i between its label and
      C's best other class, or between C's top-2): what remains when the example was pushed through
      the boundary so that every copy is fooled; the source's tracer is the one the attack rode.
      Once C itself is fooled (a push to fool every copy), C's top-2 no longer holds the clean class
      in about 1 case in 9; the "sq_" features take the clean class from C's label on the squeezed
      example (`squeeze`) instead: sq_dir = T_i[b] - T_i[y_s], b = C's best class other than y_s,
      sq_own = T_i[copy i's label] - T_i[y_s], sq_pair_gap = copy i's margin of b over y_s.
    C's own top-2 gap and the share of copies fooled tell the regime apart."""
    _check_names(copy_names, context_names)
    c, h, w = copies.tracer.input_shape
    check_images(x, "examples", channels=c, size=(h, w))
    alpha, tau = float(copies.params.alpha), float(copies.params.tau)
    squeezed = any(n in SQUEEZED_COPY_FEATURES for n in copy_names) or any(
        n in SQUEEZED_CONTEXT_FEATURES for n in context_names)
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
        at_label = traced.gather(2, label.unsqueeze(2)).squeeze(2)
        own_dir = at_label - traced.gather(2, rival.unsqueeze(2)).squeeze(2)
        dol = dol_from_scores(scores, traced)
        rules["dol"].append(dol)
        rules["margin"].append(margin_from_scores(scores, probs))
        rules["proximity"].append(-gap)
        fooled = (label != c1.unsqueeze(1)).float()
        third = ((label != c1.unsqueeze(1)) & (label != c2.unsqueeze(1))).float()
        named = {
            "log_gap": log_gap, "log_gap_rel": log_gap - log_gap.amin(1, keepdim=True), "pair_diff": pair_diff,
            "pair_gap": pair_gap.clamp(-20, 20), "own_dir": own_dir,
            "own_dir_rel": own_dir - _others_extreme(own_dir, True), "fooled": fooled, "dol": dol,
            "third_class": third, "pair_diff_above": pair_diff - _others_extreme(pair_diff, True),
            "pair_diff_below": pair_diff - _others_extreme(pair_diff, False)}
        context = {
            "log_c_gap": _log_units(c_gap, alpha), "c_gap": (c_gap / alpha).clamp(max=20), "share_fooled": fooled.mean(1),
            "min_log_gap": log_gap.amin(1), "c_top": c_top2.values[:, 0],
            "all_agree": (label == label[:, :1]).all(1).float()}
        if squeezed:
            sq_probs = torch.softmax(copies.classifier(squeeze(chunk).float()) / tau, dim=1)  # C alone
            sq_top2 = sq_probs.topk(2, dim=1)
            y_s = sq_top2.indices[:, 0]  # (B,) the clean class, as far as C can tell
            best = probs.scatter(1, y_s.unsqueeze(1), float("-inf")).argmax(1)  # C's best class other than y_s
            sq_dir = at(best) - at(y_s)
            p_gap = probs.gather(1, best.unsqueeze(1)) - probs.gather(1, y_s.unsqueeze(1))  # (B, 1)
            named.update({"sq_dir": sq_dir, "sq_dir_rel": sq_dir - _others_extreme(sq_dir, True),
                          "sq_own": at_label - at(y_s), "sq_pair_gap": ((p_gap + alpha * sq_dir) / alpha).clamp(-20, 20)})
            context.update({"sq_agrees": (y_s == c1).float(),
                            "sq_log_gap": _log_units(sq_top2.values[:, 0] - sq_top2.values[:, 1], alpha)})
        feats.append(torch.stack([named[n] for n in copy_names], dim=2))
        ctxs.append(torch.stack([context[n] for n in context_names], dim=1))
    if not feats:
        m = copies.num_copies
        return (torch.empty(0, m, len(copy_names)), torch.empty(0, len(context_names)),
                {rule: torch.empty(0, m) for rule in FORMULA_RULES})
    return torch.cat(feats), torch.cat(ctxs), {rule: torch.cat(parts) for rule, parts in rules.items()}
