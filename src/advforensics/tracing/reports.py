"""Ranking copies for a set of examples, per example and pooled, under one score rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from advforensics.errors import InputValidationError
from advforensics.tracing.calibration import Calibration
from advforensics.tracing.copies import CopySet
from advforensics.tracing.names import DEFAULT_RULE
from advforensics.tracing.scores import copy_scores

CONFIDENT = 0.99  # an accusation: a copy named with at least this confidence
ONE_SOURCE_ALPHA = 1e-3  # the test that rejects "one source" for a file of examples


def one_source_test(accusations: torch.Tensor, n: int, threshold: float) -> bool:
    """Is a file of n examples consistent with one source? accusations (m,): confident accusations
    per copy. Under one source, every accusation of another copy is an error, which a confidence of
    `threshold` promises at rate <= 1 - threshold; "one source" is rejected when the second most
    accused copy is accused more often than that rate explains (binomial tail < ONE_SOURCE_ALPHA)."""
    from scipy.stats import binom

    counts = accusations.sort(descending=True).values
    if len(counts) < 2 or int(counts[1]) == 0:
        return True
    return float(binom.sf(int(counts[1]) - 1, n, 1.0 - threshold)) >= ONE_SOURCE_ALPHA


@dataclass(frozen=True)
class TracedExample:
    """One example's answer: the copy it names (None: none of these copies), with the stated confidence
    (None where the rule is uncalibrated) and whether that confidence accuses the copy."""

    row: int
    copy: int | None
    confidence: float | None
    accused: bool


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
    aggregate_false_alarm: torch.Tensor | None = None  # (m,) pooled (geometric-mean) p-value of each copy
    example_confidence: torch.Tensor | None = None  # (B,) confidence of naming each example's top copy
    aggregate_confidence: torch.Tensor | None = None  # (m,) pooled confidence of naming each copy

    @property
    def num_copies(self) -> int:
        return int(self.scores.shape[1])

    def accusations(self) -> torch.Tensor:
        """(m,) examples naming each copy at confidence >= CONFIDENT (zeros when uncalibrated)."""
        if self.example_confidence is None:
            return torch.zeros(self.num_copies, dtype=torch.int64)
        confident = self.example_confidence >= CONFIDENT
        return torch.bincount(self.predicted[confident], minlength=self.num_copies)

    @property
    def one_source(self) -> bool:
        """False when confident accusations name a second copy more often than errors explain."""
        return one_source_test(self.accusations(), int(self.scores.shape[0]), CONFIDENT)

    @property
    def aggregate_source(self) -> int:
        return int(self.aggregate_ranking[0])

    @property
    def source(self) -> int | None:
        """The pooled verdict: the top copy, or None when the file holds several sources."""
        return self.aggregate_source if self.one_source else None

    @property
    def confidence(self) -> float | None:
        """The pooled confidence of `source` (None uncalibrated or without a single source)."""
        if self.aggregate_confidence is None or not self.one_source:
            return None
        return float(self.aggregate_confidence[self.aggregate_source])

    @property
    def accused(self) -> bool:
        return self.source is not None and (self.confidence or 0.0) >= CONFIDENT

    def examples(self, rows: list[int] | None = None) -> list[TracedExample]:
        rows = list(range(len(self.predicted))) if rows is None else rows
        out = []
        for b, row in enumerate(rows):
            confidence = None if self.example_confidence is None else float(self.example_confidence[b])
            out.append(TracedExample(row=row, copy=int(self.predicted[b]), confidence=confidence,
                                     accused=confidence is not None and confidence >= CONFIDENT))
        return out

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
        out["one_source"] = self.one_source
        out["accusations"] = self.accusations().tolist()
        if self.aggregate_false_alarm is not None and self.aggregate_confidence is not None:
            out["aggregate"]["false_alarm_rate"] = [float(f"{float(v):.4g}") for v in self.aggregate_false_alarm]
            if self.one_source:  # a file of several sources gets no single confident verdict
                out["aggregate"]["confidence"] = float(f"{float(self.aggregate_confidence[self.aggregate_source]):.6g}")
        for b in range(self.scores.shape[0]):
            row: dict[str, Any] = {
                "source": int(self.predicted[b]),
                "ranking": self.ranking[b].tolist(),
                "scores": [round(float(v), 6) for v in self.scores[b]],
            }
            if self.false_alarm is not None and self.example_confidence is not None:
                row["false_alarm_rate"] = float(f"{float(self.false_alarm[b]):.4g}")
                row["confidence"] = round(float(self.example_confidence[b]), 6)
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
                       aggregate_false_alarm=calibration.combined_false_alarm_rate(scores, p),
                       example_confidence=calibration.confidence(scores, p).gather(1, ranking[:, :1]).squeeze(1).float(),
                       aggregate_confidence=calibration.pooled_confidence(scores, p).float())


def trace(copies: CopySet, x: torch.Tensor, calibration: Calibration | None = None,
          rule: str | None = None) -> TraceReport:
    """Trace adversarial examples x (B, C, H, W) in [0, 1] to the copy they were crafted on.
    The rule defaults to the calibration's, else DEFAULT_RULE."""
    rule = rule or (calibration.rule if calibration is not None else DEFAULT_RULE)
    return trace_scores(copy_scores(copies, x, rule), rule, calibration)





@dataclass
class SourceGroup:
    """Examples attributed to one alternative (a copy, or None: none of these copies), pooled."""

    source: int | None
    rows: list[int]  # row indices into the evidence
    confidence: float  # pooled probability of `source`
    probabilities: list[float]  # pooled (m + 1): each copy, then "none"


@dataclass
class LearnedReport:
    """The learned rule's answer for a set of examples: per example, and pooled.

    Each example gets the scorer's probabilities over the m copies and "none of these copies", and
    for each copy an error rate: the larger of one minus its learned probability and the smallest
    null-calibrated false-alarm bound of the formula rules for that copy (two keys: both the learned
    rule and a formula rule must vouch for an accusation). Naming a copy states one minus that rate. Pooling takes the renormalised geometric mean of the per-example probabilities
    (its argmax is the product rule's) and the geometric mean of the false-alarm rates, never their
    product: one attacker's examples are not independent (same images, same attack). A file whose
    confident accusations name two or more copies beyond the error rate a confidence promises is
    split into per-source groups, with no single verdict (`one_source` False)."""

    probabilities: torch.Tensor  # (B, m + 1), last column "none of these copies"
    false_alarm: torch.Tensor  # (B, m) error rate of naming each copy
    rows: list[int]
    threshold: float = CONFIDENT

    @property
    def num_copies(self) -> int:
        return int(self.probabilities.shape[1]) - 1

    def subset(self, index: torch.Tensor) -> LearnedReport:
        """The report of some of the examples (index (k,) into this report's rows)."""
        return LearnedReport(probabilities=self.probabilities[index], false_alarm=self.false_alarm[index],
                             rows=[self.rows[int(i)] for i in index], threshold=self.threshold)

    def per_example(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(named (B,): a copy index, or m for none; confidence (B,); accused (B,) bool)."""
        named = self.probabilities.argmax(1)
        is_copy = named < self.num_copies
        rate = self.false_alarm.gather(1, named.clamp(max=self.num_copies - 1).unsqueeze(1)).squeeze(1)
        confidence = torch.where(is_copy, 1.0 - rate, self.probabilities[:, -1])
        return named, confidence, is_copy & (confidence >= self.threshold)

    def accusations(self) -> torch.Tensor:
        """(m,) how many examples name each copy with at least `threshold`."""
        named, _, accused = self.per_example()
        return torch.bincount(named[accused], minlength=self.num_copies + 1)[: self.num_copies]

    @property
    def one_source(self) -> bool:
        """False when a second copy is accused more often than the promised error rate explains."""
        return one_source_test(self.accusations(), len(self.rows), self.threshold)

    def _pool(self, index: torch.Tensor) -> SourceGroup:
        pooled = torch.softmax(self.probabilities[index].clamp_min(1e-12).log().mean(0), dim=0)
        best = int(pooled.argmax())
        if best == self.num_copies:
            return SourceGroup(source=None, rows=[self.rows[int(i)] for i in index], confidence=float(pooled[best]),
                               probabilities=[round(float(v), 6) for v in pooled])
        rate = float(self.false_alarm[index, best].log().mean().exp())
        return SourceGroup(source=best, rows=[self.rows[int(i)] for i in index], confidence=1.0 - rate,
                           probabilities=[round(float(v), 6) for v in pooled])

    @property
    def source(self) -> int | None:
        """The pooled verdict: the copy named for the whole file (None: none of these copies, or several
        sources; see groups())."""
        return self.groups()[0].source if self.one_source else None

    @property
    def confidence(self) -> float | None:
        """The pooled confidence of the verdict (of "none of these copies" when source is None; None when
        the file holds several sources)."""
        return self.groups()[0].confidence if self.one_source else None

    @property
    def accused(self) -> bool:
        return self.source is not None and (self.confidence or 0.0) >= self.threshold

    def examples(self, rows: list[int] | None = None) -> list[TracedExample]:
        named, confidence, accused = self.per_example()
        m = self.num_copies
        return [TracedExample(row=row, copy=None if int(n) == m else int(n), confidence=float(c), accused=bool(a))
                for row, n, c, a in zip(self.rows, named, confidence, accused)]

    def copy_confidences(self) -> torch.Tensor:
        """(m,) pooled confidence of naming each copy against its null: one minus the geometric mean of
        the examples' error rates for that copy."""
        return 1.0 - self.false_alarm.clamp_min(1e-12).log().mean(0).exp()

    @staticmethod
    def null_confidence(level: float = 0.01) -> float:
        """The pooled confidence an innocent copy exceeds with probability at most `level`, whatever the
        dependence between the examples: e times the geometric mean of valid p-values is itself a valid
        p-value (Vovk and Wang 2020, "Combining p-values via averaging"), so 1 - GM >= 1 - level / e
        happens at most `level` of the time. One example alone would need only 1 - level."""
        return 1.0 - level / math.e

    def groups(self) -> list[SourceGroup]:
        """One pooled group for the whole file when `one_source`, else one per named alternative."""
        if self.one_source:
            return [self._pool(torch.arange(len(self.rows)))]
        named = self.probabilities.argmax(1)
        return [self._pool((named == j).nonzero().squeeze(1)) for j in named.unique().tolist()]

    def to_dict(self) -> dict[str, Any]:
        named, confidence, accused = self.per_example()
        m = self.num_copies
        return {
            "rule": "learned", "num_examples": len(self.rows), "num_copies": m, "threshold": self.threshold,
            "one_source": self.one_source, "accusations": self.accusations().tolist(),
            "per_example": [{"row": row, "source": None if int(n) == m else int(n), "confidence": round(float(c), 6),
                             "accused": bool(a), "probabilities": [round(float(v), 6) for v in p]}
                            for row, n, c, a, p in zip(self.rows, named, confidence, accused, self.probabilities)],
            "groups": [{"source": g.source, "rows": g.rows, "confidence": round(g.confidence, 6),
                        "accused": g.source is not None and g.confidence >= self.threshold,
                        "probabilities": g.probabilities} for g in self.groups()],
        }


def two_key_error(probabilities: torch.Tensor, scores: dict[str, torch.Tensor],
                  calibrations: dict[str, Calibration]) -> torch.Tensor:
    """(B, m) error rate of naming each copy: max(1 - learned probability, min over the calibrated
    formula rules of their false-alarm bound (m - 1) p). Without calibrations, the learned alone."""
    m = probabilities.shape[1] - 1
    learned = 1.0 - probabilities[:, :m]
    bounds = [((m - 1) * cal.false_alarm_rate(scores[rule]).float()).clamp(max=1.0)
              for rule, cal in calibrations.items() if rule in scores]
    if not bounds:
        return learned
    return torch.maximum(learned, torch.stack(bounds).amin(0))


def trace_learned(copies: CopySet, scorer: torch.nn.Module, x: torch.Tensor, rows: list[int] | None = None,
                  threshold: float = CONFIDENT, calibrations: dict[str, Calibration] | None = None) -> LearnedReport:
    """Trace examples x (B, C, H, W) in [0, 1] with a fitted learned scorer (learned.py); `calibrations`
    (rule -> the record's Calibration) are the second key of every accusation."""
    from advforensics.tracing.scores import features_and_rules

    if len(x) == 0:
        raise InputValidationError("no examples to trace")
    names = {k: tuple(getattr(scorer, k)) for k in ("copy_names", "context_names") if hasattr(scorer, k)}
    features, context, scores = features_and_rules(copies, x, **names)  # one shared pass for both keys
    with torch.no_grad():
        probabilities = scorer(features, context)
    calibrations = calibrations or {}
    return LearnedReport(probabilities=probabilities, false_alarm=two_key_error(probabilities, scores, calibrations),
                         rows=list(range(len(x))) if rows is None else list(rows), threshold=threshold)
