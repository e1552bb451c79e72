"""Ranking copies for a set of examples, per example and pooled, under one score rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from advforensics.errors import InputValidationError
from advforensics.tracing.calibration import Calibration, confidence_from_false_alarm
from advforensics.tracing.copies import CopySet
from advforensics.tracing.names import DEFAULT_RULE
from advforensics.tracing.scores import copy_scores

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

