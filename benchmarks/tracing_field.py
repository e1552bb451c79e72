"""Tracing in the field: every rule on every attack implementation x attacker behaviour x re-encoding,
and the controls, as Markdown tables (docs/tracing.md).

The evidence comes from benchmarks/tracing_field_attacks.py (crafted on the record's copies, or for
controls on models that are not those copies). The learned rule is the one stored in the record by
`trace separate`; it was fitted on simulated attackers only (min-norm PGD points, see learned.py),
so every set here is evidence it never saw. Sets are tagged by role:
- dev: the project's own ART attacks, looked at while the rule's features and simulation were chosen;
- held-out: foolbox, the random search and the noise-averaging attacker, never looked at before the
  final run.

    python benchmarks/tracing_field.py --record runs/field/copies-learned --evidence runs/field/evidence \
        --data-dir ../shared/data --out runs/field/study --seed 0
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from advforensics.data import load_dataset
from advforensics.evidence.transforms import reencode
from advforensics.tracing.calibration import Calibration
from advforensics.reporting.tracing_tables import control_table, regime_table
from advforensics.tracing.field import REGIMES, control_row, regime_row
from advforensics.tracing.learned import scorer_from_dict
from advforensics.tracing.names import FORMULA_RULES
from advforensics.tracing.record import load_copies
from advforensics.utils import write_json

ROLES = {"art-hsj": "dev", "art-boundary": "dev", "fb-hsj": "held-out", "fb-boundary": "held-out",
         "rs": "held-out", "smooth-hsj": "held-out (behaviour)"}


def plot_reliability(rows: list[dict], controls: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({r["regime"] for r in rows}, key=REGIMES.index)
    fig, axes = plt.subplots(2, (len(regimes) + 2) // 2, figsize=(3.2 * ((len(regimes) + 2) // 2), 6.4))
    for ax, regime in zip(axes.flat, [*regimes, "controls"]):
        source = controls if regime == "controls" else [r for r in rows if r["regime"] == regime]
        for r in source:
            bins = np.array(r["reliability"]) if r["reliability"] else np.zeros((0, 4))
            if len(bins):
                ax.plot(bins[:, 1], bins[:, 2], "o-", ms=3, label=r["evidence"])
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=regime, xlim=(0, 1.02), ylim=(0, 1.02), xlabel="stated", ylabel="observed")
    for ax in list(axes.flat)[len(regimes) + 1:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", required=True, type=Path)
    p.add_argument("--evidence", required=True, type=Path)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sets", default=",".join(ROLES))
    p.add_argument("--clean", type=int, default=500, help="clean test images as a control")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    record, copies = load_copies(args.record)
    scorer = scorer_from_dict(record.learned) if record.learned else None
    calibrations = {rule: Calibration.from_dict(record.calibration_for(rule)) for rule in FORMULA_RULES
                    if record.calibration_for(rule)}
    rows, controls = [], []
    for name in args.sets.split(","):
        path = args.evidence / f"{name}.npz"
        if not path.is_file():
            logging.warning("missing %s", path)
            continue
        with np.load(path, allow_pickle=False) as d:
            ok = d["fooled"]
            x_adv, x0 = torch.from_numpy(d["x_adv"][ok]), torch.from_numpy(d["clean"][ok])
            labels, sources = torch.from_numpy(d["labels"][ok]).long(), torch.from_numpy(d["sources"][ok]).long()
        for regime in REGIMES:
            rows.append(regime_row(copies, scorer, calibrations, name, regime, x0, x_adv, labels, sources,
                                   args.seed).to_dict())
            logging.info("%s %s: %s", name, regime, {k: round(v["accuracy"], 3) for k, v in rows[-1]["rules"].items()})
    for path in sorted(args.evidence.glob("ctl-*.npz")):
        with np.load(path, allow_pickle=False) as d:
            x = torch.from_numpy(d["x_adv"][d["fooled"]])
        for spec in ("none", "png", "jpeg:90"):
            controls.append(control_row(copies, scorer, calibrations, f"{path.stem} {spec}", reencode(x, spec),
                                        seed=args.seed).to_dict())
    test = load_dataset("mnist", "test", data_dir=args.data_dir)
    order = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(args.seed + 7))[: args.clean]
    for spec in ("png", "jpeg:75", "noise:4"):
        controls.append(control_row(copies, scorer, calibrations, f"clean {spec}", reencode(test.images[order], spec),
                                    seed=args.seed).to_dict())
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"rows": rows, "controls": controls, "record": str(args.record),
                                           "seed": args.seed, "learned_info": (record.learned or {}).get("info")})
    plot_reliability(rows, controls, args.out / "reliability.png")
    text = "## Regimes\n\n" + regime_table(rows, ROLES) + "\n\n## Controls\n\n" + control_table(controls) + "\n"
    (args.out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
