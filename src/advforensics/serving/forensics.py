"""One reading of a query log: every buyer's detection verdict, the copy it queried and, for a flagged
buyer, the attack family its query pattern shows (`queries detect`, `investigate --query-log`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from advforensics.errors import InputValidationError
from advforensics.serving.detection import BuyerVerdict, DetectorConfig, QueryDetector, detect_buyer
from advforensics.serving.families import FamilyModel, QuerySequence
from advforensics.serving.querylog import QueryLog


@dataclass(frozen=True)
class BuyerFinding:
    verdict: BuyerVerdict
    copy_index: int
    family: str | None = None  # only for a flagged buyer, given a family model; may be "unknown"
    family_probability: float | None = None

    @property
    def flagged(self) -> bool:
        return self.verdict.flagged


@dataclass(frozen=True)
class LogFindings:
    log: str
    detector: DetectorConfig
    buyers: list[BuyerFinding]
    image_shape: tuple[int, ...]  # what the detector was calibrated on (and the log holds)
    families_model: str | None = None

    @property
    def flagged(self) -> list[BuyerFinding]:
        return [b for b in self.buyers if b.flagged]

    def markdown_table(self) -> str:
        rows = ["| buyer | copy | queries | hits | flagged at query | verdict | attack family |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for b in self.buyers:
            v = b.verdict
            family = "-" if b.family is None else f"{b.family} ({b.family_probability:.2f})"
            rows.append(f"| {v.buyer} | {b.copy_index} | {v.queries} | {v.hits} | "
                        f"{v.flagged_at if v.flagged else '-'} | {'ATTACK IN PROGRESS' if v.flagged else 'benign'} | "
                        f"{family} |")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"log": self.log, "detector": self.detector.to_dict(), "families_model": self.families_model,
                "buyers": [{**asdict(b.verdict), "copy": b.copy_index, "family": b.family,
                            "family_probability": b.family_probability} for b in self.buyers]}


def examine_log(log_target: str | Path, detector: QueryDetector | str | Path,
                families: FamilyModel | str | Path | None = None) -> LogFindings:
    """Detect per buyer; name the family of each flagged buyer's first `window` queries."""
    detector = detector if isinstance(detector, QueryDetector) else QueryDetector.load(detector)
    families_path = None if families is None or isinstance(families, FamilyModel) else str(families)
    families = FamilyModel.load(families) if families_path else families
    query_log = QueryLog(str(log_target), create=False)
    if query_log.image_shape is not None and query_log.image_shape != detector.image_shape:
        raise InputValidationError(f"the detector was calibrated on images {list(detector.image_shape)}, the log "
                                   f"holds {list(query_log.image_shape)}; calibrate on the served data")
    findings = []
    for name, mine in query_log.read().by_buyer().items():  # the log split by buyer once
        verdict = detect_buyer(name, mine.sketches, detector.config.checked())
        family = probability = None
        if families is not None and verdict.flagged and verdict.queries >= 3:
            family, probability = families.predict(QuerySequence.from_log(mine))
        findings.append(BuyerFinding(verdict, int(mine.copy_indices[-1]), family, probability))
    return LogFindings(str(log_target), detector.config, findings, tuple(detector.image_shape), families_path)


__all__ = ["BuyerFinding", "LogFindings", "examine_log"]
