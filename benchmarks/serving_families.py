"""Naming the attack family from a buyer's queries: held-out simulations and the real HTTP log.

    advforensics queries families --record runs/serving/copies --copy 0 --data mnist --data-dir ../shared/data \
        --per-family 40 --seed 0 --out runs/serving/families.json
    python benchmarks/serving_families.py --record runs/serving/copies --families runs/serving/families.json \
        --detection runs/serving/detection --data-dir ../shared/data --per-family 20 --seed 1

The family model is fitted on the seller's own simulations (the project's attacks on train images of
copy 0, seed 0). Measured here, never fitted on: (1) the same attacks simulated on test images of
copy 1 with seed 1; (2) every buyer of the detection benchmark's log (benchmarks/serving_detection.py),
whose queries went through HTTP: the project's attacks, foolbox's HopSkipJump and Boundary (another
library: their family is right), a random search (an attack outside the families: "unknown" is right),
HopSkipJump with noise-averaged or benign-padded queries (attacker behaviours), and benign buyers.
Figures: share named right with a 95% Wilson interval, and the most common answers.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


from advforensics.data import load_dataset
from advforensics.serving.families import UNKNOWN, FamilyModel, QuerySequence
from advforensics.serving.querylog import QueryLog
from advforensics.serving.simulate import BENIGN, simulate_families
from advforensics.tracing.record import load_copies
from advforensics.utils import wilson_interval

# the detection benchmark's rows -> the right answer
EXPECTED = {
    "hopskipjump (ART, ours)": "hopskipjump", "boundary (ART, ours)": "boundary", "signopt (ART, ours)": "signopt",
    "qeba (ours)": "qeba", "surfree (ours)": "surfree", "hopskipjump (foolbox)": "hopskipjump",
    "boundary (foolbox)": "boundary", "hopskipjump (foolbox Linf 8 steps)": "hopskipjump", "random search": UNKNOWN,
    "hopskipjump, noise-averaged queries": "hopskipjump", "hopskipjump, padded with benign images": "hopskipjump",
    "benign": BENIGN, "benign, heavy repeats": BENIGN,
}


def _table(title: str, groups: dict[str, tuple[str, list[str]]]) -> list[dict]:
    print(f"\n{title}\n")
    print("| sequences | right answer | n | named right (%) [95% CI] | unknown (%) | most common answers |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for name, (expected, answers) in groups.items():
        right = sum(a == expected for a in answers)
        low, high = wilson_interval(right, len(answers))
        common = ", ".join(f"{a} {c}" for a, c in Counter(answers).most_common(3))
        unknown = 100 * sum(a == UNKNOWN for a in answers) / len(answers)
        print(f"| {name} | {expected} | {len(answers)} | {100 * right / len(answers):.1f} [{100 * low:.1f}, "
              f"{100 * high:.1f}] | {unknown:.1f} | {common} |")
        rows.append({"sequences": name, "expected": expected, "n": len(answers), "right": right,
                     "answers": dict(Counter(answers))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--families", type=Path, required=True)
    parser.add_argument("--detection", type=Path, default=None,
                        help="the --out folder of serving_detection.py (without it: the simulations only)")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--copy", type=int, default=1, help="the copy the held-out simulations attack")
    parser.add_argument("--per-family", type=int, default=20, help="held-out simulations per family (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON of both tables (default: beside --families)")
    args = parser.parse_args()
    model = FamilyModel.load(args.families)
    print(f"Family model {args.families}: {', '.join(model.families)}; window {model.window}, "
          f"min confidence {model.min_confidence}; fitted with {model.info}")

    simulated = []
    if args.per_family > 0:
        _, copies = load_copies(args.record, warn=False)
        test = load_dataset(args.data, split="test", data_dir=args.data_dir)
        features, names = simulate_families(copies.copy(args.copy), test.images, test.labels, args.per_family,
                                            seed=args.seed, window=model.window)
        answers = [name for name, _ in model.name(features)]
        simulated = _table(f"Held out: simulated on {args.data} test images, copy {args.copy}, seed {args.seed}",
                           {f: (f, [a for a, n in zip(answers, names) if n == f]) for f in sorted(set(names))})

    out = args.out or args.families.with_name("families-benchmark.json")
    if args.detection is None:
        out.write_text(json.dumps({"simulated": simulated, "seed": args.seed}, indent=2))
        return
    plan = json.loads((args.detection / "detection.json").read_text())["buyers"]
    logged = QueryLog(args.detection / "queries.sqlite", create=False).read().by_buyer()
    by_row: dict[str, tuple[str, list[str]]] = {}
    for buyer, row in plan.items():
        mine = logged.get(buyer)
        if mine is not None and len(mine) >= 3:
            by_row.setdefault(row, (EXPECTED[row], []))[1].append(model.predict(QuerySequence.from_log(mine))[0])
    real = _table("Held out: every buyer of the detection benchmark's log (through HTTP)", by_row)
    out.write_text(json.dumps({"simulated": simulated, "log": real, "seed": args.seed}, indent=2))


if __name__ == "__main__":
    main()
