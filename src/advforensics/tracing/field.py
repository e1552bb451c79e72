"""Tracing in the field: every attacker behaviour and re-encoding as its own row, every rule side by
side, and the controls that test whether a confidence keeps its promise.

`apply_regime` turns examples as crafted (with their clean images) into what an investigator would
hold under one regime; `regime_row` scores one regime; `control_row` measures accusations on
examples that no copy made. A study (benchmarks/tracing_field.py) runs them on evidence from attack
implementations and behaviours that the learned rule was never fitted on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.evidence.transforms import reencode
from advforensics.tracing.behaviours import low_pass, transfer_seeking
from advforensics.tracing.calibration import Calibration
from advforensics.tracing.copies import CopySet
from advforensics.tracing.reports import CONFIDENT, LearnedReport, trace_learned, trace_scores
from advforensics.tracing.names import FORMULA_RULES
from advforensics.tracing.scores import rule_scores
from advforensics.utils import wilson_interval

#: Regimes of the study: behaviours first, then re-encodings of the examples as crafted.
REGIMES = ("as crafted", "transfer-1", "transfer-all", "low-pass", "png", "jpeg:90", "jpeg:75", "resize:0.75",
           "noise:2")
RELIABILITY_BINS = (0.0, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0001)


def apply_regime(copies: CopySet, regime: str, x0: torch.Tensor, x_adv: torch.Tensor, labels: torch.Tensor,
                 sources: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(evidence (B, C, H, W), kept (B,) bool): the rows where the behaviour reached its goal."""
    if regime == "as crafted":
        return x_adv, torch.ones(len(x_adv), dtype=torch.bool)
    if regime in ("transfer-1", "transfer-all"):
        return transfer_seeking(copies, sources, x0, x_adv, labels, others=1 if regime == "transfer-1" else None)
    if regime == "low-pass":
        out, kept = x_adv.clone(), torch.zeros(len(x_adv), dtype=torch.bool)
        for i in sources.unique().tolist():
            rows = sources == i
            out[rows], kept[rows] = low_pass(copies.copy(i), x0[rows], x_adv[rows], labels[rows])
        return out, kept
    return reencode(x_adv, regime, seed=seed), torch.ones(len(x_adv), dtype=torch.bool)


@dataclass
class RuleResult:
    accuracy: float
    ci95: tuple[float, float]
    confident_share: float | None = None  # named a copy at confidence >= 0.99
    confident_wrong: int | None = None
    pooled5_accuracy: float | None = None


@dataclass
class RegimeRow:
    evidence: str
    regime: str
    attacked: int  # examples as crafted that fooled their copy
    n: int  # rows of this regime traced: those where the behaviour reached its goal
    still_fools_source: float  # share of the traced rows that still fool their own copy
    fools_another: float  # share that fool at least one other copy
    still_fooling: int = 0  # traced rows that still fool some copy (after a re-encoding, few do)
    still_fooling_accuracy: dict[str, float] = field(default_factory=dict)  # rule -> accuracy on those
    rules: dict[str, RuleResult] = field(default_factory=dict)
    none_share: float = 0.0  # learned rule: examples answered "none of these copies"
    pooled5_groups: int = 0
    reliability: list[list[float]] = field(default_factory=list)  # [bin low, stated mean, observed, count]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reliability(confidence: torch.Tensor, correct: torch.Tensor) -> list[list[float]]:
    """Stated vs observed accuracy per confidence bin: [low edge, mean stated, observed, count]."""
    out = []
    for lo, hi in zip(RELIABILITY_BINS[:-1], RELIABILITY_BINS[1:]):
        rows = (confidence >= lo) & (confidence < hi)
        if rows.any():
            out.append([lo, float(confidence[rows].mean()), float(correct[rows].float().mean()), int(rows.sum())])
    return out


def _pooled_groups(sources: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Consecutive groups of `size` rows of one source."""
    groups = []
    for i in sources.unique().tolist():
        rows = (sources == i).nonzero().squeeze(1)
        groups += [rows[s:s + size] for s in range(0, len(rows) - size + 1, size)]
    return groups


def regime_row(copies: CopySet, scorer: nn.Module | None, calibrations: dict[str, Calibration], evidence: str,
               regime: str, x0: torch.Tensor, x_adv: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor,
               seed: int = 0) -> RegimeRow:
    """Trace one regime of one evidence set with every rule (the learned one where `scorer` is given)."""
    x, kept = apply_regime(copies, regime, x0, x_adv, labels, sources, seed)
    wrong = copies.labels(x) != labels.unsqueeze(1)  # (B, m) fooled
    own = wrong[torch.arange(len(x)), sources]
    others = (wrong.sum(1) - own.long()) > 0
    row = RegimeRow(evidence=evidence, regime=regime, attacked=len(x), n=int(kept.sum()),
                    still_fools_source=float(own[kept].float().mean()) if kept.any() else 0.0,
                    fools_another=float(others[kept].float().mean()) if kept.any() else 0.0)
    if not kept.any():
        return row
    fooling = wrong[kept].any(1)
    row.still_fooling = int(fooling.sum())
    x, src = x[kept], sources[kept]
    groups = _pooled_groups(src, 5)
    row.pooled5_groups = len(groups)
    scores = rule_scores(copies, x)
    for rule in FORMULA_RULES:
        correct = scores[rule].argmax(1) == src
        result = RuleResult(accuracy=float(correct.float().mean()), ci95=wilson_interval(int(correct.sum()), len(src)))
        if rule in calibrations:
            report = trace_scores(scores[rule], rule, calibrations[rule])
            confident = report.example_confidence >= CONFIDENT
            result.confident_share = float(confident.float().mean())
            result.confident_wrong = int((confident & ~correct).sum())
        if groups:
            result.pooled5_accuracy = sum(int(trace_scores(scores[rule][g], rule).aggregate_source == int(src[g[0]]))
                                          for g in groups) / len(groups)
        row.rules[rule] = result
        if fooling.any():
            row.still_fooling_accuracy[rule] = float(correct[fooling].float().mean())
    if scorer is not None:
        report = trace_learned(copies, scorer, x, calibrations=calibrations)
        top, conf, accused = report.per_example()
        correct = top == src
        row.rules["learned"] = RuleResult(
            accuracy=float(correct.float().mean()), ci95=wilson_interval(int(correct.sum()), len(src)),
            confident_share=float(accused.float().mean()), confident_wrong=int((accused & ~correct).sum()),
            pooled5_accuracy=(sum(_pooled_source(report, g) == int(src[g[0]]) for g in groups) / len(groups))
            if groups else None)
        row.none_share = float((top == copies.num_copies).float().mean())
        row.reliability = reliability(conf, correct)
        if fooling.any():
            row.still_fooling_accuracy["learned"] = float(correct[fooling].float().mean())
    return row


def _pooled_source(report: LearnedReport, rows: torch.Tensor) -> int | None:
    """The pooled verdict of some rows (None: none of these copies, or the rows were split as mixed)."""
    sub = report.subset(rows)
    return sub.groups()[0].source if sub.one_source else None


@dataclass
class ControlRow:
    """Examples no copy made: every accusation is wrong."""

    evidence: str
    n: int
    confident: dict[str, float] = field(default_factory=dict)  # rule -> share accused at >= 0.99
    pooled10_groups: int = 0
    pooled10_confident: dict[str, float] = field(default_factory=dict)
    none_share: float = 0.0  # learned: answered "none of these copies"
    reliability: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def control_row(copies: CopySet, scorer: nn.Module | None, calibrations: dict[str, Calibration], evidence: str,
                x: torch.Tensor, groups: int = 100, seed: int = 0) -> ControlRow:
    """Accusations on control examples, per example and pooled over `groups` random groups of 10."""
    if len(x) < 10:
        raise InputValidationError("a control row needs at least 10 examples")
    gen = torch.Generator().manual_seed(seed)
    pools = [torch.randperm(len(x), generator=gen)[:10] for _ in range(groups)]
    row = ControlRow(evidence=evidence, n=len(x), pooled10_groups=groups)
    scores = rule_scores(copies, x)
    m = copies.num_copies
    for rule, cal in calibrations.items():
        report = trace_scores(scores[rule], rule, cal)
        row.confident[rule] = float((report.example_confidence >= CONFIDENT).float().mean())
        pooled = [trace_scores(scores[rule][g], rule, cal) for g in pools]
        row.pooled10_confident[rule] = sum(
            float(p.aggregate_confidence[p.aggregate_source]) >= CONFIDENT
            for p in pooled) / groups
    if scorer is not None:
        report = trace_learned(copies, scorer, x, calibrations=calibrations)
        top, conf, accused = report.per_example()
        row.confident["learned"] = float(accused.float().mean())
        row.none_share = float((top == m).float().mean())
        row.reliability = reliability(conf, top == m)
        hits = 0
        for g in pools:
            hits += any(grp.source is not None and grp.confidence >= CONFIDENT for grp in report.subset(g).groups())
        row.pooled10_confident["learned"] = hits / groups
    return row
