"""Benchmark of the hard-label attacks on a small CNN: success, median L2, queries, seconds per example.

Trains a LeNet-style CNN on the embedded MNIST subset (mnist-5k, 4000 train / 1000 test; scikit-learn's
digits with --dataset digits), picks the first N correctly classified test images, and runs every
hard-label attack at a comparable budget of a few thousand queries per example. "on boundary" is the
share of successful examples that are no longer adversarial 3 * boundary_tol (L2) back towards the
clean image along the perturbation, i.e. that end on the decision boundary (what tracing needs).

    python benchmarks/hard_label_attacks.py --n 20 --seed 0 --json hard_label.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from typing import Any

import torch
from torch import nn

from advforensics.attacks import create_attack
from advforensics.data import load_dataset

logger = logging.getLogger("hard_label_benchmark")

# (label, attack name, parameters): budgets of roughly 3-7k queries per example
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("Boundary (ART)", "boundary", {"max_iter": 200}),
    ("HopSkipJump (ART), boundary search", "hopskipjump", {"max_iter": 15, "max_eval": 1000, "init_eval": 100}),
    ("HopSkipJump (ART), ART's own end", "hopskipjump",
     {"max_iter": 15, "max_eval": 1000, "init_eval": 100, "boundary_search": False}),
    ("Sign-OPT (ART)", "signopt", {"max_queries": 3000}),
    ("QEBA-S (ratio 2)", "qeba", {"max_queries": 4000, "subspace": "spatial", "ratio": 2}),
    ("QEBA-F (ratio 2)", "qeba", {"max_queries": 4000, "subspace": "frequency", "ratio": 2}),
    ("SurFree", "surfree", {"max_queries": 4000}),
]


class SmallCNN(nn.Module):
    """LeNet-style CNN for (B, 1, 28, 28) or (B, 1, 8, 8) inputs in [0, 1]; logits (B, 10)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.float()))


def train(dataset: str, seed: int, epochs: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """Train SmallCNN; return (model, test images, test labels, test accuracy)."""
    if dataset == "digits":
        data = load_dataset("digits")
        n_train = int(0.8 * len(data))
        x_tr, y_tr, x_te, y_te = data.images[:n_train], data.labels[:n_train], data.images[n_train:], \
            data.labels[n_train:]
    else:
        train_set, test_set = load_dataset(dataset, "train"), load_dataset(dataset, "test")
        x_tr, y_tr, x_te, y_te = train_set.images, train_set.labels, test_set.images, test_set.labels
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SmallCNN(x_tr.shape[-1])
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x_tr), generator=generator).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x_tr[batch]), y_tr[batch]).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_te).argmax(1) == y_te).float().mean())
    return model, x_te, y_te, accuracy


def on_boundary(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, step: float) -> torch.Tensor:
    """(B,) bool: x_adv stepped `step` (L2) back towards x is classified y again."""
    delta = x_adv - x
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    with torch.no_grad():
        return model((x + delta * (1 - step / norm)).clamp(0, 1)).argmax(1) == y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist-5k", choices=["mnist-5k", "digits"])
    parser.add_argument("--n", type=int, default=20, help="correctly classified test images to attack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", nargs="*", help="attack labels' substrings to run (default: all)")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)

    started = time.time()
    model, x_te, y_te, accuracy = train(args.dataset, args.seed, args.epochs)
    logger.info("trained SmallCNN on %s: test accuracy %.4f (%.0f s)", args.dataset, accuracy, time.time() - started)
    with torch.no_grad():
        correct = (model(x_te).argmax(1) == y_te).nonzero().flatten()[:args.n]
    x, y = x_te[correct], y_te[correct]

    rows = []
    for label, name, params in CONFIGS:
        if args.only and not any(s.lower() in label.lower() for s in args.only):
            continue
        attack = create_attack(name, **params, seed=args.seed)
        start = time.time()
        result = attack(model, x, y)
        seconds = (time.time() - start) / len(x)
        ok = result.success
        tol = float(result.params["boundary_tol"])
        boundary = on_boundary(model, x, result.x_adv, y, 3 * tol)[ok]
        row = {"attack": label, "name": name, "params": {k: v for k, v in params.items()},
               "success_rate": result.success_rate,
               "median_l2": float(result.l2[ok].median()) if ok.any() else None,
               "mean_queries": float(result.queries.float().mean()),
               "max_queries": int(result.queries.max()),
               "on_boundary": float(boundary.float().mean()) if ok.any() else None,
               "seconds_per_example": seconds}
        rows.append(row)
        logger.info("%s: %s", label, row)

    print(f"\nSmallCNN on {args.dataset} (test accuracy {accuracy:.4f}), {len(x)} correctly classified test "
          f"images, seed {args.seed}, {platform.machine()} CPU, 1 torch thread\n")
    print("| attack | budget | success | median L2 | mean queries | max queries | on boundary | s / example |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        budget = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        l2 = f"{r['median_l2']:.3f}" if r["median_l2"] is not None else "-"
        ob = f"{100 * r['on_boundary']:.0f}%" if r["on_boundary"] is not None else "-"
        print(f"| {r['attack']} | {budget} | {100 * r['success_rate']:.0f}% | {l2} | {r['mean_queries']:.0f} | "
              f"{r['max_queries']} | {ob} | {r['seconds_per_example']:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"dataset": args.dataset, "n": len(x), "seed": args.seed, "test_accuracy": accuracy,
                       "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
