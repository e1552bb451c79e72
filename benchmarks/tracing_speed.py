"""Speed of tracing: scoring N examples among m copies vs one forward pass of C and T_0.

    python benchmarks/tracing_speed.py --classifier runs/tracing/lenet_mnist --examples 10000 --copies 100

Copies share C and T_0, so scoring m copies = one shared pass + an O(m * K) gather per example.
Past max_copies(K) (30 for K = 10) the copies read blocks of a tracer with more outputs
(permutations.copy_layout), as `trace separate` makes them, so T_0's pass grows with m / 30.
Prints a Markdown table; median of --repeats runs; 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from advforensics.models import create_model, load_model
from advforensics.tracing.copies import CopyParams, CopySet
from advforensics.tracing.names import FORMULA_RULES
from advforensics.tracing.calibration import Calibration
from advforensics.tracing.reports import trace_learned
from advforensics.tracing.learned import LearnedScorer
from advforensics.tracing.scores import FEATURE_SETS, copy_scores
from advforensics.tracing.permutations import copy_layout, tracer_blocks
from advforensics.tracing.tracer import create_tracer


def _timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", type=Path, default=None, help="zoo checkpoint (default: fresh LeNet)")
    parser.add_argument("--examples", type=int, default=10000)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    if args.classifier is not None:
        classifier, _ = load_model(args.classifier)
    else:
        classifier = create_model("lenet", num_classes=10, in_channels=1, image_size=28, seed=args.seed)
    classifier.eval()
    k = 10
    tracer = create_tracer("random", seed=args.seed, num_outputs=k * tracer_blocks(k, args.copies))
    perms, blocks = copy_layout(k, args.copies)
    copies = CopySet(classifier, tracer, perms, CopyParams(), blocks=blocks)
    x = torch.rand(args.examples, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
    batches = x.split(args.batch_size)

    def forward_only() -> None:
        with torch.no_grad():
            for b in batches:
                copies.shared_pass(b)

    # the learned rule's cost depends on neither the weights nor the calibration's values, only on its
    # feature set: "base" (the one shared pass) or "squeezed" (one more pass of C)
    scorers = {name: LearnedScorer(len(c), len(x), copy_names=c, context_names=x).eval()
               for name, (c, x) in FEATURE_SETS.items()}
    null = torch.randn(200, copies.num_copies)
    calibrations = {rule: Calibration.from_scores(null, torch.zeros(200, dtype=torch.int64), rule=rule)
                    for rule in FORMULA_RULES}

    def full_scoring(rule: str) -> None:  # the library call users make, input checks included
        if rule.startswith("learned"):  # the shared pass(es), the small per-copy network and the formula key
            trace_learned(copies, scorers[rule.partition(":")[2] or "base"], x, calibrations=calibrations)
        else:
            copy_scores(copies, x, rule, batch_size=args.batch_size)

    def naive() -> None:  # m forward passes (what the design forbids), timed on 5 copies and scaled
        with torch.no_grad():
            for i in range(5):
                model = copies.copy(i)
                for b in batches:
                    model(b)

    full_scoring("dol")  # warm-up
    t_forward = _timed(forward_only, args.repeats)
    t_naive5 = _timed(naive, 1)
    rows = []
    print("| rule | examples | copies | forward C+T0 (s) | score all copies (s) | ratio | naive m passes (s, est.) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rule in (*FORMULA_RULES, "learned", "learned:squeezed"):
        t_full = _timed(lambda: full_scoring(rule), args.repeats)
        row = {"rule": rule, "examples": args.examples, "copies": args.copies, "threads": 1,
               "forward_C_T0_s": round(t_forward, 4), "scoring_all_copies_s": round(t_full, 4),
               "ratio": round(t_full / t_forward, 3),
               "naive_per_copy_forward_s_estimated": round(t_naive5 / 5 * args.copies, 2)}
        rows.append(row)
        print(f"| {rule} | {args.examples} | {args.copies} | {t_forward:.3f} | {t_full:.3f} | {t_full / t_forward:.2f} | "
              f"{row['naive_per_copy_forward_s_estimated']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
