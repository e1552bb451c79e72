"""What the tracing study measures on an attack set: accuracy with its interval, per-source and pooled
accuracy, confident accusations, the scores' KS distances, the transfer matrix, the robustness cost."""

from __future__ import annotations

from typing import Any

import torch

from advforensics.studies.tracing_examples import ExampleSet
from advforensics.tracing.calibration import Calibration
from advforensics.tracing.copies import CopySet
from advforensics.tracing.reports import trace_scores
from advforensics.utils import wilson_interval

CONFIDENT = 0.99  # a trace at or above this confidence is an accusation


def tracing_metrics(scores: torch.Tensor, sources: torch.Tensor, rule: str,
                    calibration: Calibration | None) -> dict[str, Any]:
    """Accuracy (with a Wilson 95% interval), per-source accuracy, prediction histogram, the
    share of confident accusations, and 3-example pooled accuracy, for one score rule."""
    m = scores.shape[1]
    predicted = scores.argmax(1)
    correct = predicted == sources
    n = len(sources)
    out: dict[str, Any] = {
        "examples": n,
        "accuracy": float(correct.float().mean()),
        "ci95": list(wilson_interval(int(correct.sum()), n)),
        "per_source": [float(correct[sources == i].float().mean()) if (sources == i).any() else None
                       for i in range(m)],
        "per_source_n": [int((sources == i).sum()) for i in range(m)],
        "histogram": torch.bincount(predicted, minlength=m).tolist(),
    }
    if calibration is not None and calibration.rule == rule:
        report = trace_scores(scores, rule, calibration)
        confident = report.example_confidence >= CONFIDENT
        out["confident_share"] = float(confident.float().mean())
        out["confident_wrong"] = int((confident & ~correct).sum())
    hits = groups = 0
    for i in range(m):
        rows = scores[sources == i]
        for start in range(0, len(rows) - 2, 3):
            groups += 1
            hits += int(trace_scores(rows[start:start + 3], rule, None).aggregate_source == i)
    out["pooled3_accuracy"] = hits / groups if groups else None
    out["pooled3_groups"] = groups
    return out


def ks_statistics(scores: torch.Tensor, sources: torch.Tensor) -> dict[str, float]:
    """KS D between the source copy's scores and one innocent copy's, and between two innocents."""
    from scipy.stats import ks_2samp

    m = scores.shape[1]
    offsets = torch.arange(len(sources))
    source = scores[offsets, sources].numpy()
    innocent_a = scores[offsets, (sources + 1) % m].numpy()
    innocent_b = scores[offsets, (sources + 2) % m].numpy()
    return {"source_vs_innocent": float(ks_2samp(source, innocent_a).statistic),
            "innocent_vs_innocent": float(ks_2samp(innocent_a, innocent_b).statistic)}


def transfer_matrix(copies: CopySet, examples: ExampleSet) -> list[list[float]]:
    """T[i][j] = share of examples crafted on copy i whose label under copy j differs from the clean label."""
    fooled = copies.labels(examples.x_adv) != examples.labels.unsqueeze(1)  # (N, m)
    return [[float(fooled[examples.sources == i, j].float().mean()) if (examples.sources == i).any() else float("nan")
             for j in range(copies.num_copies)] for i in range(copies.num_copies)]


def robustness_cost(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Median L2 of successful examples on the copies vs on C alone, per attack (same attack budget)."""
    rows = []
    for attack in results["config"]["attacks"]:
        on_c = next((r["median_l2"] for r in results.get("controls", [])
                     if r["attack"] == attack and r["control"] == "C alone"), None)
        for r in results.get("tracing", []):
            if r["attack"] == attack:
                ratio = r["median_l2"] / on_c if on_c and r["median_l2"] else None
                rows.append({"attack": attack, "alpha": r["alpha"], "median_l2_copy": r["median_l2"],
                             "median_l2_classifier": on_c, "ratio": ratio})
    return rows


def median_or_none(values: torch.Tensor) -> float | None:
    return float(values.median()) if len(values) else None
