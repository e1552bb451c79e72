"""Calibration of a score rule on points whose source is known, and the boundary points that make it.

A `Calibration` holds the measured score distribution of innocent copies (the null) and of source
copies. The false-alarm rate of a score s is how often an innocent copy scores at least s (an
empirical p-value); with m copies, the chance that one of the m - 1 innocent copies does is at most
(m - 1) times that, and the confidence is one minus this bound. Only the null enters the confidence:
the source distribution depends on how precisely an attacker lands on the boundary, which the seller
cannot know. Pooled over examples, the rates are averaged (geometrically), never multiplied. The learned rule (learned.py) replaces this null with answers fitted on controls.
A second null, of every copy's score on boundary points of C alone (an attack no copy made), keeps
the rate valid on such examples too: the rate is the larger of the two.

That bound answers "could an innocent copy score this high?", not "which of two near-tied copies is
the source?". With many copies, some innocent copy often lies about as near its boundary as the
source does (100 copies, HopSkipJump: 3 of the 12 examples the bound alone named at 0.99 were
wrong). So proximity has a second key, the copy's share (`Calibration.shares`): the posterior that
it is the source among the copies within reach of their boundary, under a scale-free prior on how
far past its boundary an attacker lands. A proximity confidence is the smaller of the two.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.tracing.copies import CopySet
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES
from advforensics.tracing.scores import check_rule, rule_scores
from advforensics.utils import check_images

@dataclass
class Calibration:
    """Histograms of one score rule for the source copy and for innocent copies, measured on
    examples whose source is known. Bin edges are quantiles of all scores seen (the rules live on
    very different scales); densities use add-one smoothing so that no bin has zero likelihood."""

    bins: int
    source_counts: list[int]
    innocent_counts: list[int]
    innocent_sorted: list[float]  # every innocent score seen, sorted (for false-alarm rates)
    method: str = ""  # how the examples were made
    info: dict[str, Any] = field(default_factory=dict)
    rule: str = "dol"  # records written before score rules existed were DOL
    edges: list[float] | None = None  # bins + 1 edges; None: uniform over DOL_RANGE (old records)
    # every copy's score on boundary points of C alone, sorted: a second null, for examples no copy
    # made (an attack on C itself). None in records written before session 14.
    control_sorted: list[float] | None = None

    @classmethod
    def from_scores(cls, scores: torch.Tensor, sources: torch.Tensor, rule: str = DEFAULT_RULE, bins: int = 40,
                    method: str = "", info: dict[str, Any] | None = None,
                    controls: torch.Tensor | None = None) -> Calibration:
        """scores (N, m) under `rule` and the true source index of each example (N,) -> Calibration.
        controls (N', m): scores on examples that no copy made (boundary points of C alone)."""
        check_rule(rule)
        if scores.dim() != 2 or sources.shape != (scores.shape[0],):
            raise InputValidationError("calibration needs scores (N, m) and sources (N,)")
        if len(scores) == 0:
            raise InputValidationError("calibration needs at least one example")
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[torch.arange(len(scores)), sources] = True
        src = scores[mask].double().numpy()
        inn = scores[~mask].double().numpy()
        edges = np.unique(np.quantile(np.concatenate([src, inn]), np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            edges = np.array([edges[0] - 1.0, edges[0] + 1.0])
        return cls(bins=len(edges) - 1, source_counts=_histogram(src, edges).tolist(),
                   innocent_counts=_histogram(inn, edges).tolist(),
                   innocent_sorted=np.sort(inn).round(7).tolist(), method=method, info=dict(info or {}),
                   rule=rule, edges=edges.tolist(),
                   control_sorted=None if controls is None or controls.numel() == 0
                   else np.sort(controls.double().numpy().ravel()).round(7).tolist())

    def to_dict(self) -> dict[str, Any]:
        out = {"bins": self.bins, "source_counts": self.source_counts, "innocent_counts": self.innocent_counts,
               "innocent_sorted": self.innocent_sorted, "method": self.method, "info": self.info,
               "rule": self.rule, "edges": self.edges}
        if self.control_sorted is not None:
            out["control_sorted"] = self.control_sorted
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibration:
        known = {"bins", "source_counts", "innocent_counts", "innocent_sorted", "method", "info", "rule", "edges",
                 "control_sorted"}
        unknown = set(payload) - known
        if unknown:
            raise InputValidationError(f"calibration has unknown fields: {sorted(unknown)}")
        cal = cls(**payload)
        check_rule(cal.rule)
        if len(cal.source_counts) != cal.bins or len(cal.innocent_counts) != cal.bins:
            raise InputValidationError("calibration histograms do not match their bin count")
        return cal

    # the nulls as arrays, converted once: a 100-copy record holds about 2 million innocent scores
    @functools.cached_property
    def _innocent(self) -> np.ndarray:
        return np.asarray(self.innocent_sorted, dtype=np.float64)

    @functools.cached_property
    def _control(self) -> np.ndarray | None:
        return None if self.control_sorted is None else np.asarray(self.control_sorted, dtype=np.float64)

    def false_alarm_rate(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, m) -> fraction of innocent copies' scores >= s (with +1 smoothing), elementwise.
        With a control null, at least m / (m - 1) times the fraction of control scores >= s, so that
        (m - 1) times the rate bounds the chance of a false alarm both when another copy made the
        example (m - 1 innocents) and when none did (all m copies innocent)."""
        rate = _upper_tail(self._innocent, scores)
        if self._control is not None:
            m = scores.shape[-1]
            rate = torch.maximum(rate, _upper_tail(self._control, scores) * m / max(m - 1, 1))
        return rate.clamp(max=1.0)

    def combined_false_alarm_rate(self, scores: torch.Tensor, rate: torch.Tensor | None = None) -> torch.Tensor:
        """scores (B, m) -> (m,) pooled false-alarm rate of each copy: the geometric mean of its
        per-example rates. Fisher's method would multiply them, which holds only for independent
        examples; one attacker's examples are not (same images, same attack), and on controls the
        product turned small biases into certainty. e times the mean is a valid p-value whatever the
        dependence (`pooled_confidence`). rate: `false_alarm_rate(scores)` if already computed."""
        rate = self.false_alarm_rate(scores) if rate is None else rate
        return rate.log().mean(dim=0).exp()


    def reach(self) -> float:
        """proximity: the largest distance to its boundary (minus the score) at which a copy can be the
        source, the distance that only PROXIMITY_REACH of the innocent copies are nearer than."""
        return max(float(-np.quantile(self._innocent, 1.0 - PROXIMITY_REACH)), MIN_DISTANCE)

    def shares(self, scores: torch.Tensor) -> torch.Tensor:
        """proximity scores (B, m) -> (B, m) posterior that each copy is the source, given that one is.

        A copy at distance d = -score from its boundary has source likelihood 1/d within `reach` (a
        scale-free prior: the seller cannot know how precisely an attacker lands) and 0 beyond, where
        an attacker is no longer a boundary-ender; innocent copies are spread evenly within that reach
        (their null is flat there: on the MNIST copies of docs/paper-scale.md the density of innocent
        scores varies by under 6% over [-0.023, 0]). So the share is 1/d over the sum of 1/d of the
        copies within reach; none within reach: all zero."""
        if self.rule != "proximity":
            raise InputValidationError(f"shares are defined for the proximity rule, not {self.rule!r}")
        distance = (-scores.double()).clamp(min=MIN_DISTANCE)
        weight = torch.where(distance <= self.reach(), 1.0 / distance, torch.zeros_like(distance))
        total = weight.sum(dim=1, keepdim=True)
        return torch.where(total > 0, weight / total.clamp_min(1e-300), torch.zeros_like(weight))

    def confidence(self, scores: torch.Tensor, rate: torch.Tensor | None = None) -> torch.Tensor:
        """scores (B, m) -> (B, m) confidence of naming each copy: 1 - (m - 1) p, and for proximity at
        most the copy's share (module docstring). rate: `false_alarm_rate(scores)` if already computed."""
        rate = self.false_alarm_rate(scores) if rate is None else rate
        bound = confidence_from_false_alarm(rate, scores.shape[1])
        if self.rule != "proximity":
            return bound
        return torch.minimum(bound, self.shares(scores))

    def pooled_confidence(self, scores: torch.Tensor, rate: torch.Tensor | None = None) -> torch.Tensor:
        """scores (B, m) of one file -> (m,) pooled confidence of naming each copy: the bound on the
        pooled false-alarm rate, and for proximity at most the copy's mean share. Means, not products:
        one attacker's examples are not independent. The geometric mean of several p-values is not a
        p-value, e times it is, under any dependence (Vovk and Wang 2020), so the pooled rate is that."""
        pooled = self.combined_false_alarm_rate(scores, rate)
        if len(scores) > 1:
            pooled = (math.e * pooled).clamp(max=1.0)
        bound = confidence_from_false_alarm(pooled, scores.shape[1])
        if self.rule != "proximity":
            return bound
        return torch.minimum(bound, self.shares(scores).mean(dim=0))


#: proximity's reach: the source lies nearer its boundary than all but this share of innocent copies
#: lie to theirs (0.025 in score units on the MNIST copies; chosen on the 100-copy ART HopSkipJump set,
#: see docs/paper-scale.md)
PROXIMITY_REACH = 0.1
MIN_DISTANCE = 1e-6  # below float32's resolution of a top-2 gap near 0


def _upper_tail(null_sorted: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
    """(#null >= s + 1) / (#null + 1), elementwise: an empirical p-value."""
    above = len(null_sorted) - np.searchsorted(null_sorted, scores.double().numpy(), side="left")
    return torch.from_numpy((above + 1.0) / (len(null_sorted) + 1.0))


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value; values outside the edges go to the first or last bin."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(_bin_index(values, edges), minlength=len(edges) - 1)


def confidence_from_false_alarm(p: torch.Tensor, num_copies: int) -> torch.Tensor:
    """1 - P(some innocent copy scores this high), bounded by (m - 1) p."""
    return (1.0 - (num_copies - 1) * p).clamp(min=0.0)


@torch.no_grad()
def boundary_points(model: nn.Module, x: torch.Tensor, partner: torch.Tensor,
                    steps: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Points just past `model`'s decision boundary on the segment x -> partner (bisection on its
    label; `model` is one copy, C alone, or any scorer).
    Returns (points (B, C, H, W), valid (B,) bool: the labels at the ends differ).

    Not a stand-in for an attack: a line search does not seek the nearest boundary point, so the
    tracer gives it no head start (see `deepfool_points`)."""
    y0 = model(x).argmax(1)
    valid = model(partner).argmax(1) != y0
    lo = torch.zeros(len(x))
    hi = torch.ones(len(x))
    for _ in range(steps):
        mid = (lo + hi) / 2
        point = x + mid.view(-1, 1, 1, 1) * (partner - x)
        flipped = model(point).argmax(1) != y0
        hi = torch.where(flipped, mid, hi)
        lo = torch.where(flipped, lo, mid)
    return (x + hi.view(-1, 1, 1, 1) * (partner - x)).clamp(0, 1), valid


def deepfool_points(model: nn.Module, x: torch.Tensor, steps: int = 40,
                    overshoot: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Near-minimal L2 boundary points of `model` (a copy, C alone, ...): DeepFool on its scores
    towards the current runner-up class, then bisection back to the boundary.

    The seller knows every copy, so this white-box minimal-distance attack is a cheap, boundary-ending
    proxy for what a hard-label attacker converges to; it calibrates the DOL distributions.
    Returns (points (B, C, H, W), valid (B,) bool: the model's label changed)."""
    with torch.no_grad():
        y0 = model(x).argmax(1)
    current = x.clone()
    done = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        current.requires_grad_(True)
        scores = model(current)  # (B, K)
        top2 = scores.topk(2, dim=1).indices
        other = torch.where(top2[:, 0] == y0, top2[:, 1], top2[:, 0])
        f = scores.gather(1, other[:, None]).squeeze(1) - scores.gather(1, y0[:, None]).squeeze(1)  # (B,)
        (grad,) = torch.autograd.grad(f.sum(), current)
        with torch.no_grad():
            done = done | (f > 0)
            norm2 = grad.flatten(1).pow(2).sum(1).clamp_min(1e-12)
            step = ((f.abs() + 1e-4) / norm2).view(-1, 1, 1, 1) * grad * (1 + overshoot)
            step[done] = 0
            current = (current + step).clamp(0, 1).detach()
        if bool(done.all()):
            break
    with torch.no_grad():
        valid = model(current).argmax(1) != y0
    points, _ = boundary_points(model, x, current, steps=20)
    return points, valid


def calibrate(copies: CopySet, x: torch.Tensor, method: str = "deepfool", seed: int = 0,
              bins: int = 40, rule: str = DEFAULT_RULE) -> Calibration:
    """Measure source and innocent scores under `rule` on boundary points made on every copy in turn.

    method "deepfool" (default): `deepfool_points`, a minimal-distance attack; "bisection": line
    search towards another image (a weak proxy, kept for comparison)."""
    return calibrate_rules(copies, x, method, seed, bins, rules=(rule,))[rule]


def calibrate_rules(copies: CopySet, x: torch.Tensor, method: str = "deepfool", seed: int = 0, bins: int = 40,
                    rules: tuple[str, ...] = FORMULA_RULES) -> dict[str, Calibration]:
    """`calibrate` for several rules from one set of boundary points (the points are the cost)."""
    c, h, w = copies.tracer.input_shape
    check_images(x, "calibration images", channels=c, size=(h, w))
    if len(x) < 2:
        raise InputValidationError("calibration needs at least 2 images")
    for rule in rules:
        check_rule(rule)
    if method not in ("deepfool", "bisection"):
        raise InputValidationError(f"calibration method must be deepfool or bisection, got {method!r}")
    gen = torch.Generator().manual_seed(seed)
    per_copy, sources = [], []
    for i in range(copies.num_copies):
        if method == "deepfool":
            points, valid = deepfool_points(copies.copy(i), x)
        else:
            points, valid = boundary_points(copies.copy(i), x, x[torch.randperm(len(x), generator=gen)])
        if valid.any():
            per_copy.append(points[valid])
            sources.append(torch.full((int(valid.sum()),), i, dtype=torch.int64))
    if not per_copy:
        raise InputValidationError("no calibration point crossed a decision boundary")
    points, source = torch.cat(per_copy), torch.cat(sources)
    scores = rule_scores(copies, points, rules)
    # the control null: boundary points of C alone, an attack that no copy made (on the MNIST copies
    # it is heavier near the boundary than the innocent copies' null; without it, 1.5-3% of examples
    # crafted on C alone were accused at 0.99, docs/paper-scale.md)
    if method == "deepfool":
        c_points, c_valid = deepfool_points(copies.classifier, x)
    else:
        c_points, c_valid = boundary_points(copies.classifier, x, x[torch.randperm(len(x), generator=gen)])
    controls = rule_scores(copies, c_points[c_valid], rules) if c_valid.any() else {r: None for r in rules}
    return {rule: Calibration.from_scores(scores[rule], source, rule=rule, bins=bins, method=method,
                                          info={"images": int(len(x)), "seed": seed}, controls=controls[rule])
            for rule in rules}



def _pgd_l2_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                   steps: int, start: torch.Tensor | None = None) -> torch.Tensor:
    """PGD in an L2 ball of per-example radius eps (B,) on the margin max_{k != y} s_k - s_y of the
    model's scores; normalised gradient steps, so saturated scores (a copy's softmax) still move.
    `start`: a perturbation to continue from (projected into the ball)."""
    delta = torch.zeros_like(x) if start is None else start * (
        eps / start.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
    step = (2.5 * eps / steps).view(-1, 1, 1, 1)
    for _ in range(steps):
        delta.requires_grad_(True)
        scores = model((x + delta).clamp(0, 1))
        other = scores.scatter(1, y[:, None], float("-inf")).max(1).values
        (grad,) = torch.autograd.grad((other - scores.gather(1, y[:, None]).squeeze(1)).sum(), delta)
        with torch.no_grad():
            delta = delta + step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (eps / norm).clamp(max=1).view(-1, 1, 1, 1)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def min_norm_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_eps: float = 6.0, rounds: int = 7,
                    steps: int = 20, later_steps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Near-minimal L2 adversarial points of `model` for (x, y), landed on its boundary: a bisection on
    the radius of a PGD-L2 attack (each round continues from the best point so far), then a line
    search back along x -> the attack's point.

    Closer to what a hard-label attack on a copy finds than `deepfool_points`: on the MNIST copies of
    docs/history/tracing-sessions-1-2.md its median L2 is 1.26 against HopSkipJump's 1.59 and DeepFool's 2.98 (DeepFool's
    linear steps follow the tracer where the copy's softmax saturates), and the tracer features of its
    points match HopSkipJump's. Returns (points (B, C, H, W), found (B,) bool)."""
    lo = torch.zeros(len(x))
    hi = torch.full((len(x),), float(max_eps))
    best = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool)
    for r in range(rounds):
        mid = (lo + hi) / 2
        # later rounds continue from the best point so far, pulled into the smaller ball
        candidate = _pgd_l2_margin(model, x, y, mid, steps if r == 0 else later_steps,
                                   start=None if r == 0 else best - x)
        with torch.no_grad():
            fooled = model(candidate).argmax(1) != y
        best[fooled] = candidate[fooled]
        found |= fooled
        hi = torch.where(fooled, mid, hi)
        lo = torch.where(fooled, lo, mid)
    points, _ = boundary_points(model, x, best, steps=20)
    return points, found
