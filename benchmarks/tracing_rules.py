"""How each tracing score rule survives what happens to evidence after the attack.

Re-traces saved examples (an OUT/examples/<set>.npz of `advforensics trace experiment`, with its
`clean` array) among the same copies, after:
8-bit rounding (saving as PNG), Gaussian noise, and overshoot (the attacker walks on past the
boundary by a share of the perturbation, x + t (x_adv - x)).

    python benchmarks/tracing_rules.py --classifier runs/tracing/lenet_mnist \
        --examples runs/trace-exp/examples/hopskipjump_a0.15_m5.npz --alpha 0.15 --copies 5 --seed 0
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from advforensics.models import load_model
from advforensics.reporting.tables import markdown_table
from advforensics.tracing.copies import CopyParams, CopySet
from advforensics.tracing.names import FORMULA_RULES
from advforensics.tracing.scores import copy_scores
from advforensics.tracing.permutations import make_permutations
from advforensics.tracing.tracer import create_tracer


def variants(x_adv: torch.Tensor, clean: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    delta = x_adv - clean
    out = {"as crafted": x_adv, "8-bit rounding": (x_adv * 255).round() / 255}
    for sigma in (1, 2, 4):
        out[f"noise sd {sigma}/255"] = (x_adv + sigma / 255 * torch.randn(x_adv.shape, generator=gen)).clamp(0, 1)
    for t in (0.05, 0.2, 0.5):
        out[f"overshoot {int(100 * t)}%"] = (x_adv + t * delta).clamp(0, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--examples", nargs="+", required=True)
    parser.add_argument("--alpha", type=float, default=0.15)
    parser.add_argument("--tau", type=float, default=2.0)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--length-scale", type=float, default=1.5)
    parser.add_argument("--gain", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0, help="tracer seed (as when the copies were made) and noise seed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    classifier, _ = load_model(args.classifier)
    tracer = create_tracer("random", length_scale=args.length_scale, gain=args.gain, seed=args.seed)
    copies = CopySet(classifier.eval(), tracer, make_permutations(10, args.copies), CopyParams(args.alpha, args.tau))
    rows = []
    for path in args.examples:
        with np.load(path, allow_pickle=False) as data:
            x_adv = torch.from_numpy(data["x_adv"]).float()
            clean = torch.from_numpy(data["clean"]).float()
            sources = torch.from_numpy(data["sources"]).long()
        for name, x in variants(x_adv, clean, args.seed).items():
            row = {"examples": path.split("/")[-1], "n": len(sources), "evidence": name}
            for rule in FORMULA_RULES:
                predicted = copy_scores(copies, x, rule).argmax(1)
                row[rule] = 100 * float((predicted == sources).float().mean())
                row[f"{rule} worst source"] = 100 * min(float((predicted[sources == i] == i).float().mean())
                                                        for i in sources.unique())
            rows.append(row)
    print(markdown_table(rows, digits=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": "python benchmarks/tracing_rules.py " + " ".join(__import__("sys").argv[1:]),
                       "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
