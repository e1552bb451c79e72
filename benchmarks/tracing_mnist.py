"""Tracing experiment on MNIST: attack each copy with a hard-label attack, trace every example.

    python benchmarks/tracing_mnist.py --classifier runs/tracing/lenet_mnist --attack hopskipjump \
        --per-source 45 --tracer random --alpha 0.15 --tau 2 --seed 0 --out runs/tracing/hsj_random

Writes OUT/examples.npz (x_adv, clean, sources, dol, c_fooled, transfer) and OUT/summary.json.
`--source control-c` attacks C alone (no tracer) and traces with the copies: the null rate.
`--source control-tracer` attacks copies built with another tracer seed (a tracer NOT used in
scoring): also a null.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from advforensics.attacks import create_attack
from advforensics.data import load_dataset
from advforensics.models import load_model
from advforensics.tracing.copies import CopyParams, CopySet
from advforensics.tracing.scores import dol_scores
from advforensics.tracing.permutations import make_permutations
from advforensics.tracing.tracer import create_tracer, load_tracer

log = logging.getLogger("tracing_mnist")

ATTACK_PARAMS = {
    "hopskipjump": {"max_iter": 20},
    "boundary": {"max_iter": 200},
}


class _Softmax(torch.nn.Module):
    """C alone as a black box (control)."""

    def __init__(self, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.eval()

    def train(self, mode: bool = True) -> "_Softmax":
        return super().train(False)  # keep C in eval mode after the attack restores modes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.float())


def run_attacks(args, attack, attack_copies, classifier, x_all, y_all, n_sources):  # type: ignore[no-untyped-def]
    """Attack each source model on fresh, correctly classified test images; keep the successes."""
    gen = torch.Generator().manual_seed(args.seed if args.image_seed is None else args.image_seed)
    pool = torch.arange(args.offset, len(x_all))
    pool = pool[torch.randperm(len(pool), generator=gen)]
    rows = {k: [] for k in ("x_adv", "clean", "label", "source", "success", "l2", "queries")}
    cursor = 0
    start = time.time()
    for i in range(n_sources):
        model = _Softmax(classifier) if args.source == "control-c" else attack_copies.copy(i)
        # fresh images that this model classifies correctly
        chosen = []
        while len(chosen) < args.per_source:
            j = int(pool[cursor]); cursor += 1
            with torch.no_grad():
                if int(model(x_all[j:j + 1]).argmax(1)) == int(y_all[j]):
                    chosen.append(j)
        idx = torch.tensor(chosen)
        result = attack(model, x_all[idx], y_all[idx])
        log.info("source %d: success %.3f median l2 %.3f (%.0fs)", i, result.success_rate,
                 float(result.l2[result.success].median()) if result.success.any() else float("nan"),
                 time.time() - start)
        rows["x_adv"].append(result.x_adv); rows["clean"].append(x_all[idx]); rows["label"].append(y_all[idx])
        rows["source"].append(torch.full((len(idx),), i)); rows["success"].append(result.success)
        rows["l2"].append(result.l2); rows["queries"].append(result.queries)
    data = {k: torch.cat(v) for k, v in rows.items()}
    ok = data["success"]
    extra = {"command": "python " + " ".join(__import__("sys").argv), "attacked": int(len(ok)),
             "successful": int(ok.sum()),
             "median_l2": float(data["l2"][ok].median()) if ok.any() else None,
             "mean_queries": float(data["queries"][ok].float().mean()) if ok.any() else None}
    return data["x_adv"][ok], data["source"][ok], data["label"][ok], data["clean"][ok], extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--attack", default="hopskipjump")
    parser.add_argument("--max-iter", type=int, default=None)
    parser.add_argument("--per-source", type=int, default=45, help="images attacked per copy")
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--tracer", default="random", help="'random' or a tracer .safetensors file")
    parser.add_argument("--length-scale", type=float, default=1.5)
    parser.add_argument("--gain", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=0.15)
    parser.add_argument("--tau", type=float, default=2.0)
    parser.add_argument("--source", default="copies", choices=["copies", "control-c", "control-tracer"])
    parser.add_argument("--offset", type=int, default=0, help="first test image used (fresh images per run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-seed", type=int, default=None,
                        help="seed of the test-image order (default: --seed); change it for fresh images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rescore", action="store_true",
                        help="no attacks: re-trace OUT/examples.npz and rewrite OUT/summary.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    classifier, card = load_model(args.classifier)
    classifier.eval()
    if args.tracer == "random":
        tracer = create_tracer("random", length_scale=args.length_scale, gain=args.gain, seed=args.seed)
    else:
        tracer = load_tracer(args.tracer)
    perms = make_permutations(10, args.copies)
    params = CopyParams(alpha=args.alpha, tau=args.tau)
    copies = CopySet(classifier, tracer, perms, params)

    test = load_dataset("mnist", "test", data_dir="/work/shared/data")
    x_all, y_all = test.images, test.labels
    with torch.no_grad():
        c_pred = torch.cat([classifier(c).argmax(1) for c in x_all.split(1000)])
        copy_pred = torch.cat([copies.labels(c) for c in x_all.split(1000)])  # (N, m)
    clean = {"c_accuracy": float((c_pred == y_all).float().mean()),
             "copy_accuracy": [float((copy_pred[:, i] == y_all).float().mean()) for i in range(args.copies)]}
    log.info("clean accuracy %s", clean)

    attack_copies = copies
    if args.source == "control-tracer":
        other = create_tracer("random", length_scale=args.length_scale, gain=args.gain, seed=args.seed + 1000)
        attack_copies = CopySet(classifier, other, perms, params)

    attack_params = dict(ATTACK_PARAMS.get(args.attack, {}))
    if args.max_iter is not None:
        attack_params["max_iter"] = args.max_iter
    attack = create_attack(args.attack, seed=args.seed, **attack_params)
    n_sources = 1 if args.source == "control-c" else args.copies
    start = time.time()
    if args.rescore:
        saved = np.load(args.out / "examples.npz", allow_pickle=False)
        old = json.loads((args.out / "summary.json").read_text())
        x_adv = torch.from_numpy(saved["x_adv"])
        sources = torch.from_numpy(saved["sources"])
        labels = torch.from_numpy(saved["labels"])
        extra = {k: old[k] for k in ("attacked", "successful", "median_l2", "mean_queries", "command")}
        clean_x = torch.from_numpy(saved["clean"]) if "clean" in saved else None
        extra["rescored_by"] = "python " + " ".join(__import__("sys").argv)
    else:
        x_adv, sources, labels, clean_x, extra = run_attacks(args, attack, attack_copies, classifier, x_all, y_all, n_sources)
    copies.eval()
    classifier.eval()
    dol = dol_scores(copies, x_adv)
    predicted = dol.argmax(1)
    with torch.no_grad():
        c_fooled = classifier(x_adv).argmax(1) != labels
        labels_all = copies.labels(x_adv)  # (n, m)
    fooled = labels_all != labels.unsqueeze(1)  # (n, m)
    if args.source == "copies":
        own = fooled[torch.arange(len(sources)), sources]
        other_fooled = (fooled.sum(1) - own.long()) > 0
    else:
        own = torch.ones(len(sources), dtype=torch.bool)
        other_fooled = fooled.any(1)
    correct = predicted == sources
    pooled_hits, pooled_total = 0, 0  # evidence pooled over 3 examples of one source (sum of DOL)
    for i in range(n_sources):
        rows_i = dol[sources == i]
        for start_row in range(0, len(rows_i) - 2, 3):
            pooled_total += 1
            pooled_hits += int(int(rows_i[start_row:start_row + 3].sum(0).argmax()) == i)
    summary = {
        "attack": args.attack, "attack_params": attack.params, "source": args.source,
        "tracer": tracer.kind, "tracer_config": {k: (list(v) if isinstance(v, tuple) else v)
                                                 for k, v in vars(tracer.config).items()},
        "alpha": args.alpha, "tau": args.tau, "copies": args.copies, "seed": args.seed,
        "clean": clean,
        **extra,
        "own_copy_fooled_rate": float(own.float().mean()) if len(own) else None,
        "tracing_accuracy": float(correct.float().mean()) if len(correct) else None,
        "per_source_accuracy": [float(correct[sources == i].float().mean()) if (sources == i).any() else None
                                for i in range(n_sources)],
        "prediction_histogram": torch.bincount(predicted, minlength=args.copies).tolist(),
        "pooled3_accuracy": pooled_hits / pooled_total if pooled_total else None,
        "pooled3_groups": pooled_total,
        "c_fooled_rate": float(c_fooled.float().mean()) if len(c_fooled) else None,
        "transfer_examples": int(other_fooled.sum()),
        "tracing_accuracy_transfer": float(correct[other_fooled].float().mean()) if other_fooled.any() else None,
        "tracing_accuracy_c_fooled": float(correct[c_fooled].float().mean()) if c_fooled.any() else None,
        "elapsed_s": round(time.time() - start, 1),
    }
    if args.source == "control-c":
        summary["note"] = "source is C alone: 'tracing_accuracy' is the share attributed to copy 0; see histogram"
    np.savez_compressed(args.out / "examples.npz", x_adv=x_adv.numpy(), sources=sources.numpy(),
                        dol=dol.numpy(), c_fooled=c_fooled.numpy(), transfer=other_fooled.numpy(),
                        labels=labels.numpy(), **({"clean": clean_x.numpy()} if clean_x is not None else {}))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
