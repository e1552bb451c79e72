"""Compare tracer variants on the same C, copies and images with a cheap proxy attack.

    python benchmarks/tracing_tracer_compare.py --classifier runs/tracing/lenet_mnist --train-images 5000 \
        --epochs 1 --images 60 --seed 0 --json runs/tracing/tracer_compare.json

Variants: the smooth random tracer (l = 1.5, g = 0.8) and the paper's VAE tracer trained with the
literal squared trap loss and with the pairwise (two-draw) fix. Proxy attack: DeepFool on each copy
ending on its boundary (`advforensics.tracing.calibration.deepfool_points`), a white-box minimal-distance
attack: NOT the hard-label attacks of the main experiment, so read it as a ranking of tracers only.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from advforensics.data import load_dataset
from advforensics.models import load_model
from advforensics.tracing.copies import CopyParams, CopySet
from advforensics.tracing.calibration import deepfool_points
from advforensics.tracing.scores import dol_scores
from advforensics.tracing.permutations import make_permutations
from advforensics.tracing.tracer import create_tracer
from advforensics.tracing.training import TraceTrainConfig, train_vae_tracer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data", help="where the MNIST files are")
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--images", type=int, default=60, help="test images attacked per copy")
    parser.add_argument("--alpha", type=float, default=0.15)
    parser.add_argument("--tau", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    classifier, _ = load_model(args.classifier)
    classifier.eval()
    train = load_dataset("mnist", "train", data_dir=args.data_dir, limit=args.train_images).images
    test = load_dataset("mnist", "test", data_dir=args.data_dir)
    x_eval = test.images[-args.images:]
    tracers = {"random l=1.5 g=0.8": create_tracer("random", length_scale=1.5, gain=0.8, seed=args.seed)}
    for trap in ("literal-squared", "pairwise"):
        tracer = create_tracer("vae", width=args.width, seed=args.seed)
        start = time.time()
        result = train_vae_tracer(tracer, train, TraceTrainConfig(epochs=args.epochs, trap=trap, seed=args.seed),
                                  progress=False)
        logging.info("vae %s trained in %.0fs: %s", trap, time.time() - start, result.history[-1])
        tracers[f"vae {trap}"] = tracer
    perms = make_permutations(10, 5)
    rows = []
    for name, tracer in tracers.items():
        copies = CopySet(classifier, tracer, perms, CopyParams(args.alpha, args.tau))
        with torch.no_grad():
            acc = [float((copies.labels(c) == y.unsqueeze(1)).float().mean(0).mean())
                   for c, y in [(test.images[:5000], test.labels[:5000])]][0]
            t_out = tracer(test.images[:1000])
        hits = total = 0
        for i in range(copies.num_copies):
            points, valid = deepfool_points(copies.copy(i), x_eval)
            hits += int((dol_scores(copies, points[valid]).argmax(1) == i).sum())
            total += int(valid.sum())
        rows.append({"tracer": name, "copy_clean_accuracy_5k": round(acc, 4),
                     "proxy_tracing_accuracy": round(hits / max(total, 1), 4), "points": total,
                     "mean_abs_output": round(float(t_out.abs().mean()), 3),
                     "mean_cos_between_images": round(float(torch.nn.functional.cosine_similarity(
                         t_out[:500], t_out[500:], dim=1).mean()), 3)})
        logging.info("%s", rows[-1])
    print("| tracer | copy clean acc (5k) | proxy tracing acc | points | mean abs T | mean cos(T(x), T(x')) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['tracer']} | {r['copy_clean_accuracy_5k']:.4f} | {r['proxy_tracing_accuracy']:.3f} | "
              f"{r['points']} | {r['mean_abs_output']} | {r['mean_cos_between_images']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
