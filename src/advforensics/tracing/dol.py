"""Tracing scores (the paper's difference of logits, DOL, and two sharper rules) and evidence
aggregation.

Every rule gives one score per copy and example, (B, m), from ONE shared forward pass of C and T_0;
the source is the copy with the highest score. No clean image or label is needed.

- "dol" (the paper): att = top-1 and cln = top-2 class of M_i(x); DOL_i = T_i(x)[att] - T_i(x)[cln].
  It reads its class pair off each copy's own ranking, so an example that falls back across the
  source's boundary (8-bit rounding, a little noise) flips the sign of the source's DOL.
- "margin": how far copy i's decision is pushed away from C's label c = argmax C(x):
  max_{k != c} M_i(x)[k] - M_i(x)[c]. The attack pushed only its own copy across; an innocent copy's
  margin differs by alpha times a different tracer difference and is mostly negative.
- "proximity": -(top-1 minus top-2 of M_i(x)). Minimal-distance (hard-label) attacks end on their
  copy's decision boundary, where that gap is ~0; innocent copies' boundaries lie elsewhere.
  Sharpest on boundary-ending attacks; an attacker who overshoots the boundary weakens it.

Evidence: for one example the source is the argmax. A `Calibration` holds the measured score
distribution of innocent copies (the null) and of source copies. The false-alarm rate of a score s
is how often an innocent copy scores at least s (an empirical p-value); with m copies, the chance
that one of the m - 1 innocent copies does is at most (m - 1) times that, and the confidence is one
minus this bound. For a set of examples from one attacker, each copy's p-values are combined by
Fisher's method (examples independent); the copy with the strongest combined evidence is named.
Only the null enters the confidence: the source distribution depends on how precisely an attacker
lands on the boundary, which the seller cannot know, while innocent copies are indifferent to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from advforensics.errors import InputValidationError
from advforensics.tracing.copies import CopySet
from advforensics.tracing.names import DEFAULT_RULE, SCORE_RULES
from advforensics.utils import check_images

DOL_RANGE = (-2.0, 2.0)  # tracer outputs lie in [-1, 1]


def check_rule(rule: str) -> str:
    if rule not in SCORE_RULES:
        raise InputValidationError(f"unknown score rule {rule!r}; choose one of {', '.join(SCORE_RULES)}")
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
def rule_scores(copies: CopySet, x: torch.Tensor, rules: tuple[str, ...] = SCORE_RULES,
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

    @classmethod
    def from_scores(cls, scores: torch.Tensor, sources: torch.Tensor, rule: str = DEFAULT_RULE, bins: int = 40,
                    method: str = "", info: dict[str, Any] | None = None) -> Calibration:
        """scores (N, m) under `rule` and the true source index of each example (N,) -> Calibration."""
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
                   rule=rule, edges=edges.tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"bins": self.bins, "source_counts": self.source_counts, "innocent_counts": self.innocent_counts,
                "innocent_sorted": self.innocent_sorted, "method": self.method, "info": self.info,
                "rule": self.rule, "edges": self.edges}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibration:
        known = {"bins", "source_counts", "innocent_counts", "innocent_sorted", "method", "info", "rule", "edges"}
        unknown = set(payload) - known
        if unknown:
            raise InputValidationError(f"calibration has unknown fields: {sorted(unknown)}")
        cal = cls(**payload)
        check_rule(cal.rule)
        if len(cal.source_counts) != cal.bins or len(cal.innocent_counts) != cal.bins:
            raise InputValidationError("calibration histograms do not match their bin count")
        return cal

    def false_alarm_rate(self, scores: torch.Tensor) -> torch.Tensor:
        """Fraction of innocent copies' scores >= s (with +1 smoothing), elementwise."""
        inn = np.asarray(self.innocent_sorted)
        above = len(inn) - np.searchsorted(inn, scores.double().numpy(), side="left")
        return torch.from_numpy((above + 1.0) / (len(inn) + 1.0))

    def combined_false_alarm_rate(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (B, m) -> (m,) Fisher-combined p-value of each copy over the B examples."""
        statistic = -2.0 * self.false_alarm_rate(scores).log().sum(dim=0)  # ~ chi2(2B) under the null
        return torch.special.gammaincc(torch.full_like(statistic, float(scores.shape[0])), statistic / 2)


def _bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value; values outside the edges go to the first or last bin."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(_bin_index(values, edges), minlength=len(edges) - 1)


def confidence_from_false_alarm(p: torch.Tensor, num_copies: int) -> torch.Tensor:
    """1 - P(some innocent copy scores this high), bounded by (m - 1) p."""
    return (1.0 - (num_copies - 1) * p).clamp(min=0.0)


@dataclass
class TraceReport:
    """Per-example and aggregated tracing of a set of examples among m copies."""

    rule: str
    scores: torch.Tensor  # (B, m)
    predicted: torch.Tensor  # (B,) argmax over copies
    ranking: torch.Tensor  # (B, m) copy indices, best first
    aggregate_evidence: torch.Tensor  # (m,) sum of scores, or of -log p-values when calibrated
    aggregate_ranking: torch.Tensor  # (m,)
    false_alarm: torch.Tensor | None = None  # (B,) p-value of each example's top copy
    aggregate_false_alarm: torch.Tensor | None = None  # (m,) Fisher-combined p-value of each copy

    @property
    def num_copies(self) -> int:
        return int(self.scores.shape[1])

    @property
    def aggregate_source(self) -> int:
        return int(self.aggregate_ranking[0])

    def to_dict(self) -> dict[str, Any]:
        m = self.num_copies
        out: dict[str, Any] = {
            "rule": self.rule,
            "num_examples": int(self.scores.shape[0]),
            "num_copies": m,
            "per_example": [],
            "aggregate": {
                "source": self.aggregate_source,
                "ranking": self.aggregate_ranking.tolist(),
                "evidence": [round(float(v), 6) for v in self.aggregate_evidence],
                "evidence_kind": "sum of scores" if self.false_alarm is None else "sum of -log false-alarm rates",
            },
        }
        if self.aggregate_false_alarm is not None:
            top = self.aggregate_false_alarm[self.aggregate_source]
            out["aggregate"]["false_alarm_rate"] = [float(f"{float(v):.4g}") for v in self.aggregate_false_alarm]
            out["aggregate"]["confidence"] = float(f"{float(confidence_from_false_alarm(top, m)):.6g}")
        for b in range(self.scores.shape[0]):
            row: dict[str, Any] = {
                "source": int(self.predicted[b]),
                "ranking": self.ranking[b].tolist(),
                "scores": [round(float(v), 6) for v in self.scores[b]],
            }
            if self.false_alarm is not None:
                row["false_alarm_rate"] = float(f"{float(self.false_alarm[b]):.4g}")
                row["confidence"] = round(float(confidence_from_false_alarm(self.false_alarm[b], m)), 6)
            out["per_example"].append(row)
        return out


def trace_scores(scores: torch.Tensor, rule: str = DEFAULT_RULE,
                 calibration: Calibration | None = None) -> TraceReport:
    """Rank copies from a score matrix (B, m), per example and aggregated."""
    if scores.dim() != 2 or scores.shape[0] == 0:
        raise InputValidationError("need a non-empty score matrix (B, m)")
    if calibration is not None and calibration.rule != rule:
        raise InputValidationError(f"calibration was measured for rule {calibration.rule!r}, scores use {rule!r}")
    ranking = scores.argsort(dim=1, descending=True)
    if calibration is None:
        evidence = scores.sum(dim=0)
        return TraceReport(rule=rule, scores=scores, predicted=ranking[:, 0], ranking=ranking,
                           aggregate_evidence=evidence, aggregate_ranking=evidence.argsort(descending=True))
    p = calibration.false_alarm_rate(scores)  # (B, m)
    evidence = -p.log().sum(dim=0)
    # ties in evidence (every score beyond the null's range) are broken by the summed scores
    order = np.lexsort((-scores.double().sum(0).numpy(), -evidence.numpy()))
    return TraceReport(rule=rule, scores=scores, predicted=ranking[:, 0], ranking=ranking,
                       aggregate_evidence=evidence.float(), aggregate_ranking=torch.from_numpy(order),
                       false_alarm=p.gather(1, ranking[:, :1]).squeeze(1),
                       aggregate_false_alarm=calibration.combined_false_alarm_rate(scores))


def trace(copies: CopySet, x: torch.Tensor, calibration: Calibration | None = None,
          rule: str | None = None) -> TraceReport:
    """Trace adversarial examples x (B, C, H, W) in [0, 1] to the copy they were crafted on.
    The rule defaults to the calibration's, else DEFAULT_RULE."""
    rule = rule or (calibration.rule if calibration is not None else DEFAULT_RULE)
    return trace_scores(copy_scores(copies, x, rule), rule, calibration)


@torch.no_grad()
def boundary_points(copies: CopySet, index: int, x: torch.Tensor, partner: torch.Tensor,
                    steps: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Points just past copy `index`'s decision boundary on the segment x -> partner (bisection on
    that copy's label). Returns (points (B, C, H, W), valid (B,) bool: the labels at the ends differ).

    Not a stand-in for an attack: a line search does not seek the nearest boundary point, so the
    tracer gives it no head start (see `deepfool_points`)."""
    model = copies.copy(index)
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


def deepfool_points(copies: CopySet, index: int, x: torch.Tensor, steps: int = 40,
                    overshoot: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Near-minimal L2 boundary points of copy `index` (DeepFool on the copy's scores towards the
    current runner-up class, then bisection back to the boundary).

    The seller knows every copy, so this white-box minimal-distance attack is a cheap, boundary-ending
    proxy for what a hard-label attacker converges to; it calibrates the DOL distributions.
    Returns (points (B, C, H, W), valid (B,) bool: the copy's label changed)."""
    model = copies.copy(index)
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
    points, _ = boundary_points(copies, index, x, current, steps=20)
    return points, valid


def calibrate(copies: CopySet, x: torch.Tensor, method: str = "deepfool", seed: int = 0,
              bins: int = 40, rule: str = DEFAULT_RULE) -> Calibration:
    """Measure source and innocent scores under `rule` on boundary points made on every copy in turn.

    method "deepfool" (default): `deepfool_points`, a minimal-distance attack; "bisection": line
    search towards another image (a weak proxy, kept for comparison)."""
    return calibrate_rules(copies, x, method, seed, bins, rules=(rule,))[rule]


def calibrate_rules(copies: CopySet, x: torch.Tensor, method: str = "deepfool", seed: int = 0, bins: int = 40,
                    rules: tuple[str, ...] = SCORE_RULES) -> dict[str, Calibration]:
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
            points, valid = deepfool_points(copies, i, x)
        else:
            points, valid = boundary_points(copies, i, x, x[torch.randperm(len(x), generator=gen)])
        if valid.any():
            per_copy.append(points[valid])
            sources.append(torch.full((int(valid.sum()),), i, dtype=torch.int64))
    if not per_copy:
        raise InputValidationError("no calibration point crossed a decision boundary")
    points, source = torch.cat(per_copy), torch.cat(sources)
    scores = rule_scores(copies, points, rules)
    return {rule: Calibration.from_scores(scores[rule], source, rule=rule, bins=bins,
                                          method=method, info={"images": int(len(x)), "seed": seed})
            for rule in rules}
