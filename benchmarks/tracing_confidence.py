"""Is proximity's stated confidence kept? The false-alarm bound alone against the two keys (the bound
and the copy's share, tracing/calibration.py), on field evidence sets x regimes and on controls.

Evidence sets come from benchmarks/tracing_field_attacks.py (x_adv, clean, labels, sources, fooled;
sources -1 for controls), or any .npz with x_adv and sources (then only "as crafted"). A stated confidence >= 0.99 that names the wrong copy, or any copy on a
control, is a confident wrong accusation.

    python benchmarks/tracing_confidence.py --record runs/scale/copies100 \
        --evidence runs/scale/evidence/fb-hsj.npz runs/scale/evidence/ctl-c-hsj.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from advforensics.reporting.tables import markdown_table
from advforensics.tracing.calibration import Calibration, confidence_from_false_alarm
from advforensics.tracing.field import REGIMES, apply_regime, reliability
from advforensics.tracing.record import load_copies
from advforensics.tracing.reports import CONFIDENT
from advforensics.tracing.scores import rule_scores
from advforensics.utils import wilson_interval


def confidences(cal: Calibration, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top copy (B,), bound-only confidence (B,), two-key confidence (B,)) of the proximity rule."""
    top = scores.argmax(1, keepdim=True)
    rate = cal.false_alarm_rate(scores)
    bound = confidence_from_false_alarm(rate, scores.shape[1]).gather(1, top).squeeze(1)
    return top.squeeze(1), bound, cal.confidence(scores, rate).gather(1, top).squeeze(1)


def row(name: str, regime: str, cal: Calibration, scores: torch.Tensor, sources: torch.Tensor) -> dict:
    top, bound, both = confidences(cal, scores)
    right = (top == sources) & (sources >= 0)
    out = {"evidence": name, "regime": regime, "n": len(sources)}
    if (sources >= 0).any():
        k = int(right.sum())
        low, high = wilson_interval(k, len(sources))
        out["accuracy %"] = f"{100 * k / len(sources):.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    for key, conf in (("bound only", bound), ("two keys", both)):
        accused = conf >= CONFIDENT
        out[f"{key}: confident"] = int(accused.sum())
        out[f"{key}: wrong"] = int((accused & ~right).sum())
    out["reliability (two keys)"] = " ".join(f"{int(n)}:{s:.2f}/{o:.2f}" for _, s, o, n in reliability(both, right))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", required=True, type=Path)
    p.add_argument("--evidence", required=True, type=Path, nargs="+", help="field evidence .npz files")
    p.add_argument("--regimes", default=",".join(REGIMES), help="regimes for attack sets (controls: as crafted)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    record, copies = load_copies(args.record, warn=False)
    cal = Calibration.from_dict(record.calibration_for("proximity"))
    rows = []
    for path in args.evidence:
        with np.load(path, allow_pickle=False) as d:
            ok = d["fooled"] if "fooled" in d else np.ones(len(d["x_adv"]), dtype=bool)
            x_adv, sources = torch.from_numpy(d["x_adv"][ok]).float(), torch.from_numpy(d["sources"][ok]).long()
            has_clean = "clean" in d and "labels" in d  # the regimes re-push from the clean image
            x0 = torch.from_numpy(d["clean"][ok]).float() if has_clean else x_adv
            labels = torch.from_numpy(d["labels"][ok]).long() if has_clean else sources
        control = bool((sources < 0).all())
        for regime in ["as crafted"] if control or not has_clean else args.regimes.split(","):
            x, kept = apply_regime(copies, regime, x0, x_adv, labels, sources, args.seed)
            scores = rule_scores(copies, x[kept], ("proximity",))["proximity"]
            rows.append(row(path.stem, regime, cal, scores, sources[kept]))
            print(rows[-1], flush=True)
    print(f"\n{copies.num_copies} copies, proximity reach {cal.reach():.4f}\n")
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"record": str(args.record), "copies": copies.num_copies,
                                         "reach": cal.reach(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
