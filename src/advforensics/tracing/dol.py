"""Tracing by the difference of logits (DOL) and evidence aggregation.

For copy i: att = top-1 and cln = top-2 class of M_i(x); DOL_i = T_i(x)[att] - T_i(x)[cln]. An
example crafted on copy i sits where copy i's tracer pushed att above cln, so the source copy tends
to have the largest DOL. No clean image or label is needed.

Evidence: for one example the source is argmax_i DOL_i. For a set of examples from the same
attacker, `trace` sums DOL over examples and, when a `Calibration` (measured DOL distributions of
source and innocent copies) is given, sums per-copy log-likelihood ratios log f_src(d) / f_inn(d)
and turns them into a posterior over copies (uniform prior, one source, examples independent).
The calibration also gives a false-alarm rate: how often an innocent copy scores at least as high.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from advforensics.errors import InputValidationError
from advforensics.tracing.copies import CopySet
from advforensics.utils import check_images

DOL_RANGE = (-2.0, 2.0)  # tracer outputs lie in [-1, 1]


def dol_from_scores(scores: torch.Tensor, traced: torch.Tensor) -> torch.Tensor:
    """scores M (B, m, K), tracer outputs T (B, m, K) -> DOL (B, m)."""
    top2 = scores.topk(2, dim=2).indices  # (B, m, 2): att, cln
    picked = torch.gather(traced, 2, top2)  # (B, m, 2)
    return picked[..., 0] - picked[..., 1]


@torch.no_grad()
def dol_scores(copies: CopySet, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """DOL of every copy for every example: x (B, C, H, W) in [0, 1] -> (B, m)."""
    c, h, w = copies.tracer.input_shape
    check_images(x, "examples", channels=c, size=(h, w))
    if len(x) == 0:
        return torch.empty(0, copies.num_copies)
    return torch.cat([dol_from_scores(*copies.scores(chunk)) for chunk in x.split(batch_size)])


@dataclass
class Calibration:
    """Histograms of DOL for the source copy and for innocent copies, measured on examples whose
    source is known. Densities use add-one smoothing so that no bin has zero likelihood."""

    bins: int
    source_counts: list[int]
    innocent_counts: list[int]
    innocent_sorted: list[float]  # every innocent DOL seen, sorted (for false-alarm rates)
    method: str = ""  # how the examples were made
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dol(cls, dol: torch.Tensor, sources: torch.Tensor, bins: int = 40, method: str = "",
                 info: dict[str, Any] | None = None) -> Calibration:
        """dol (N, m) and the true source index of each example (N,) -> Calibration."""
        if dol.dim() != 2 or sources.shape != (dol.shape[0],):
            raise InputValidationError("calibration needs dol (N, m) and sources (N,)")
        if len(dol) == 0:
            raise InputValidationError("calibration needs at least one example")
        mask = torch.zeros_like(dol, dtype=torch.bool)
        mask[torch.arange(len(dol)), sources] = True
        src = dol[mask].numpy()
        inn = dol[~mask].numpy()
        edges = np.linspace(*DOL_RANGE, bins + 1)
        return cls(bins=bins,
                   source_counts=np.histogram(np.clip(src, *DOL_RANGE), edges)[0].tolist(),
                   innocent_counts=np.histogram(np.clip(inn, *DOL_RANGE), edges)[0].tolist(),
                   innocent_sorted=np.sort(inn).astype(float).round(5).tolist(),
                   method=method, info=dict(info or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"bins": self.bins, "source_counts": self.source_counts, "innocent_counts": self.innocent_counts,
                "innocent_sorted": self.innocent_sorted, "method": self.method, "info": self.info}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibration:
        return cls(**payload)

    def _density(self, counts: list[int]) -> np.ndarray:
        smoothed = np.asarray(counts, dtype=np.float64) + 1.0
        return smoothed / smoothed.sum()

    def log_likelihood_ratio(self, dol: torch.Tensor) -> torch.Tensor:
        """log f_src(d) - log f_inn(d), elementwise, same shape as `dol`."""
        edges = np.linspace(*DOL_RANGE, self.bins + 1)
        idx = np.clip(np.searchsorted(edges, dol.numpy(), side="right") - 1, 0, self.bins - 1)
        llr = np.log(self._density(self.source_counts)) - np.log(self._density(self.innocent_counts))
        return torch.from_numpy(llr[idx]).float()

    def false_alarm_rate(self, dol: torch.Tensor) -> torch.Tensor:
        """Fraction of innocent copies' DOL >= d (with +1 smoothing), elementwise."""
        inn = np.asarray(self.innocent_sorted)
        above = len(inn) - np.searchsorted(inn, dol.numpy(), side="left")
        return torch.from_numpy((above + 1.0) / (len(inn) + 1.0)).float()


@dataclass
class TraceReport:
    """Per-example and aggregated tracing of a set of examples among m copies."""

    dol: torch.Tensor  # (B, m)
    predicted: torch.Tensor  # (B,) argmax_i DOL_i
    ranking: torch.Tensor  # (B, m) copy indices, best first
    aggregate_dol: torch.Tensor  # (m,) sum over examples
    aggregate_ranking: torch.Tensor  # (m,)
    posterior: torch.Tensor | None = None  # (B, m) per example, from the calibration
    aggregate_posterior: torch.Tensor | None = None  # (m,)
    false_alarm: torch.Tensor | None = None  # (B,) how often an innocent copy scores >= the top DOL

    @property
    def aggregate_source(self) -> int:
        if self.aggregate_posterior is not None:
            return int(self.aggregate_posterior.argmax())
        return int(self.aggregate_ranking[0])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_examples": int(self.dol.shape[0]),
            "num_copies": int(self.dol.shape[1]),
            "per_example": [],
            "aggregate": {
                "source": self.aggregate_source,
                "ranking": self.aggregate_ranking.tolist(),
                "sum_dol": [round(float(v), 5) for v in self.aggregate_dol],
            },
        }
        if self.aggregate_posterior is not None:
            out["aggregate"]["posterior"] = [round(float(v), 6) for v in self.aggregate_posterior]
            out["aggregate"]["confidence"] = round(float(self.aggregate_posterior.max()), 6)
        for b in range(self.dol.shape[0]):
            row: dict[str, Any] = {
                "source": int(self.predicted[b]),
                "ranking": self.ranking[b].tolist(),
                "dol": [round(float(v), 5) for v in self.dol[b]],
            }
            if self.posterior is not None:
                row["confidence"] = round(float(self.posterior[b].max()), 6)
            if self.false_alarm is not None:
                row["false_alarm_rate"] = round(float(self.false_alarm[b]), 6)
            out["per_example"].append(row)
        return out


def trace_dol(dol: torch.Tensor, calibration: Calibration | None = None) -> TraceReport:
    """Rank copies from a DOL matrix (B, m), per example and aggregated."""
    if dol.dim() != 2 or dol.shape[0] == 0:
        raise InputValidationError("need a non-empty DOL matrix (B, m)")
    ranking = dol.argsort(dim=1, descending=True)
    total = dol.sum(dim=0)
    report = TraceReport(dol=dol, predicted=ranking[:, 0], ranking=ranking, aggregate_dol=total,
                         aggregate_ranking=total.argsort(descending=True))
    if calibration is not None:
        llr = calibration.log_likelihood_ratio(dol)  # (B, m)
        report.posterior = torch.softmax(llr, dim=1)
        report.aggregate_posterior = torch.softmax(llr.sum(dim=0), dim=0)
        report.false_alarm = calibration.false_alarm_rate(dol.max(dim=1).values)
    return report


def trace(copies: CopySet, x: torch.Tensor, calibration: Calibration | None = None) -> TraceReport:
    """Trace adversarial examples x (B, C, H, W) in [0, 1] to the copy they were crafted on."""
    return trace_dol(dol_scores(copies, x), calibration)


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
              bins: int = 40) -> Calibration:
    """Measure source and innocent DOL on boundary points made on every copy in turn.

    method "deepfool" (default): `deepfool_points`, a minimal-distance attack; "bisection": line
    search towards another image (a weak proxy, kept for comparison)."""
    c, h, w = copies.tracer.input_shape
    check_images(x, "calibration images", channels=c, size=(h, w))
    if len(x) < 2:
        raise InputValidationError("calibration needs at least 2 images")
    if method not in ("deepfool", "bisection"):
        raise InputValidationError(f"calibration method must be deepfool or bisection, got {method!r}")
    gen = torch.Generator().manual_seed(seed)
    dols, sources = [], []
    for i in range(copies.num_copies):
        if method == "deepfool":
            points, valid = deepfool_points(copies, i, x)
        else:
            points, valid = boundary_points(copies, i, x, x[torch.randperm(len(x), generator=gen)])
        if valid.any():
            dols.append(dol_scores(copies, points[valid]))
            sources.append(torch.full((int(valid.sum()),), i, dtype=torch.int64))
    if not dols:
        raise InputValidationError("no calibration point crossed a decision boundary")
    return Calibration.from_dol(torch.cat(dols), torch.cat(sources), bins=bins, method=method,
                                info={"images": int(len(x)), "seed": seed})
