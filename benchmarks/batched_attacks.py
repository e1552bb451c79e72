"""Batched hard-label attacks against ART's one-image-at-a-time attacks, at the same query budget.

    advforensics models train --model lenet --data mnist --data-dir ../shared/data --seed 0 --out runs/zoo
    python benchmarks/batched_attacks.py --classifier runs/zoo/lenet --data mnist --data-dir ../shared/data \
        --images 200 --max-iter 20 --max-eval 1000

Both run on the same correctly classified test images, with the same starts and per-example seeds, one
torch thread. Prints a Markdown table: success, median L2, mean queries, wall time, images/s, queries/s,
the speed-up over ART, and how many examples came out identical to ART's (L2 difference < 1e-4).
A last line gives the ceiling: the classifier's own rows/s at its fastest batch size, which no
attack's queries/s can pass, so ART's queries/s over it bounds what batching can gain on this machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from advforensics.attacks import create_attack
from advforensics.data.api import load_dataset
from advforensics.models import load_model

PAIRS = {"hopskipjump": "hopskipjump-batched"}  # ART adapter -> batched implementation


def forward_ceiling(model: torch.nn.Module, x: torch.Tensor, batches: tuple[int, ...] = (32, 64, 128, 256, 512, 1000),
                    repeats: int = 5) -> tuple[float, int]:
    """(rows per second, batch size) of the classifier alone at its fastest batch size (best of `repeats`)."""
    best_rate, best_batch = 0.0, batches[0]
    with torch.no_grad():
        for batch in batches:
            rows = x[torch.arange(batch) % len(x)]
            model(rows)  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                model(rows)
                rate = batch / (time.perf_counter() - start)
                if rate > best_rate:
                    best_rate, best_batch = rate, batch
    return best_rate, best_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", type=Path, required=True, help="zoo checkpoint (models train --out)")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--offset", type=int, default=0, help="first test image")
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--max-eval", type=int, default=1000)
    parser.add_argument("--init-eval", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.classifier)
    model.eval()
    data = load_dataset(args.data, split="test", data_dir=args.data_dir, limit=args.offset + 4 * args.images)
    x, y = torch.as_tensor(data.images)[args.offset:], torch.as_tensor(data.labels)[args.offset:]
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().flatten()[:args.images]
    x, y = x[correct], y[correct]
    params = {"max_iter": args.max_iter, "max_eval": args.max_eval, "init_eval": args.init_eval, "seed": args.seed}
    rows = []
    print("| attack | implementation | images | success % | median L2 | mean queries | wall (s) | images/s | "
          "queries/s | speed-up | identical to ART |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for art_name, batched_name in PAIRS.items():
        results = {}
        for name in (art_name, batched_name):
            start = time.perf_counter()
            result = create_attack(name, **params)(model, x, y)
            results[name] = (result, time.perf_counter() - start)
        art_seconds = results[art_name][1]
        art_adv = results[art_name][0].x_adv
        for name, (result, seconds) in results.items():
            ok = result.success
            identical = int(((result.x_adv - art_adv).flatten(1).norm(dim=1) < 1e-4).sum())
            row = {"attack": art_name, "implementation": name, "images": len(x), "threads": args.threads,
                   "params": params, "success": float(ok.float().mean()),
                   "median_l2": float(result.l2[ok].median()) if ok.any() else None,
                   "mean_queries": float(result.queries.float().mean()), "seconds": round(seconds, 2),
                   "images_per_s": len(x) / seconds, "queries_per_s": float(result.queries.sum()) / seconds,
                   "speedup": art_seconds / seconds, "identical_to_art": identical}
            rows.append(row)
            print(f"| {art_name} | {name} | {len(x)} | {100 * row['success']:.1f} | {row['median_l2']:.3f} | "
                  f"{row['mean_queries']:.0f} | {seconds:.1f} | {row['images_per_s']:.2f} | "
                  f"{row['queries_per_s']:.0f} | {row['speedup']:.2f} | {identical} |")
    ceiling, batch = forward_ceiling(model, x)
    art_qps = next(r["queries_per_s"] for r in rows if r["implementation"] in PAIRS)
    print(f"\nceiling: the classifier evaluates {ceiling:.0f} rows/s at its fastest batch size, {batch} "
          f"({args.threads} thread(s)); "
          f"ART's queries/s is {art_qps / ceiling:.0%} of it, so batching gains at most {ceiling / art_qps:.2f}x here")
    rows.append({"ceiling_rows_per_s": ceiling, "threads": args.threads, "max_gain_over_art": ceiling / art_qps})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
