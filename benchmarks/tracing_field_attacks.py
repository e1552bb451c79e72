"""Field evidence for tracing: adversarial examples made by code and attackers the tracing rule never saw.

Each set is crafted on the copies of a seller record (or, for controls, on models that are NOT
those copies) and cached as OUT/<set>.npz with x_adv, clean, labels and sources (-1 = no copy).
Sets are resumable one by one, so a long run can be split across processes (`--data cifar10` for a
CIFAR-10 record; the fb-* sets need foolbox: `pip install -e ".[field]"`):

    python benchmarks/tracing_field_attacks.py --record runs/field/copies --data-dir ../shared/data \
        --out runs/field/evidence --sets art-hsj,art-boundary --per-source 45 --seed 0

Implementations:
- art-*: the project's own ART adapters (ART HopSkipJump / Boundary, ending with a binary search
  back to the boundary);
- fb-*: foolbox 3 HopSkipJump and Boundary (another library; its own initialisation and stopping);
- rs: a plain random-direction search written here (not shipped by the project);
- smooth-hsj: an attacker who knows the scheme and averages every query over input noise
  (majority label over 8 fixed noise patterns, sd 0.1), so that he attacks a smoothed copy;
- ctl-*: controls, crafted on C alone, on copies with another tracer (seed 1000), or on an unrelated
  model (another LeNet trained with seed 1: `advforensics models train --model lenet --data mnist
  --seed 1 --out runs/field/unrelated`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advforensics.attacks import create_attack
from advforensics.data import load_dataset
from advforensics.tracing.copies import CopySet
from advforensics.studies.tracing_examples import ClassifierOracle
from advforensics.tracing.record import load_copies
from advforensics.tracing.tracer import create_tracer

log = logging.getLogger("tracing_field_attacks")

ART_HSJ = {"max_iter": 20, "max_eval": 1000, "init_eval": 100}
ART_BOUNDARY = {"max_iter": 200}


class NoiseAveragedOracle(nn.Module):
    """The label an attacker sees when he averages each query over `draws` noisy versions of it
    (majority vote, one-hot), to wash the tracer's small-scale structure out of the boundary. The
    noise patterns are drawn once, so that the averaged oracle is a fixed function (an attack's
    binary searches fail against an oracle that answers the same query differently)."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...], sigma: float = 0.1, draws: int = 8,
                 seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.noise = torch.randn((draws, *shape), generator=torch.Generator().manual_seed(seed)) * sigma

    def train(self, mode: bool = True) -> NoiseAveragedOracle:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        labels = torch.stack([self.model((x + n).clamp(0, 1)).argmax(1) for n in self.noise])  # (draws, B)
        k = self.model(x[:1]).shape[1]
        return torch.nn.functional.one_hot(labels, k).sum(0).float() / len(self.noise)  # (B, K)


def foolbox_attack(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    import foolbox as fb

    torch.manual_seed(seed)
    fmodel = fb.PyTorchModel(model.eval(), bounds=(0, 1))
    if kind == "hsj":
        attack = fb.attacks.HopSkipJumpAttack(steps=20, max_gradient_eval_steps=1000)
    else:
        attack = fb.attacks.BoundaryAttack(steps=5000)
    raw, _, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
    return raw.detach()


@torch.no_grad()
def random_search_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
                         directions: int = 40, rounds: int = 60) -> torch.Tensor:
    """Random low-frequency directions, each searched to the boundary; keep the nearest and refine it
    by random perturbations of the direction (accept when the boundary comes nearer)."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape

    def sample(n: int) -> torch.Tensor:
        low = torch.randn((n, c, max(h // 4, 1), max(w // 4, 1)), generator=gen)
        d = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        return d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def distance(xi: torch.Tensor, yi: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Smallest t in [0, 20] with model(x + t d) != y along each direction (inf if none)."""
        lo = torch.zeros(len(d))
        hi = torch.full((len(d),), 20.0)
        ok = model((xi + hi.view(-1, 1, 1, 1) * d).clamp(0, 1)).argmax(1) != yi
        for _ in range(20):
            mid = (lo + hi) / 2
            flip = model((xi + mid.view(-1, 1, 1, 1) * d).clamp(0, 1)).argmax(1) != yi
            hi, lo = torch.where(flip, mid, hi), torch.where(flip, lo, mid)
        return torch.where(ok, hi, torch.full_like(hi, float("inf")))

    out = x.clone()
    for i in range(b):
        xi, yi = x[i:i + 1], y[i]
        ds = sample(directions)
        dist = distance(xi, yi, ds)
        best = int(dist.argmin())
        d, t = ds[best:best + 1], float(dist[best])
        if not np.isfinite(t):
            continue
        for r in range(rounds):
            cand = d + 0.3 * (0.97 ** r) * sample(8)
            cand = cand / cand.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            cd = distance(xi, yi, cand)
            j = int(cd.argmin())
            if float(cd[j]) < t:
                d, t = cand[j:j + 1], float(cd[j])
        out[i] = (xi + t * d).clamp(0, 1)[0]
    return out


def pick(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, cursor: int,
         n: int) -> tuple[torch.Tensor, int]:
    chosen: list[int] = []
    while len(chosen) < n:
        batch = order[cursor:cursor + 4 * n]
        if len(batch) == 0:
            raise SystemExit("ran out of test images")
        cursor += len(batch)
        with torch.no_grad():
            right = model(images[batch]).argmax(1) == labels[batch]
        chosen += batch[right].tolist()[: n - len(chosen)]
    return torch.tensor(chosen), cursor


def craft(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    if method == "art-hsj":
        return create_attack("hopskipjump", seed=seed, **ART_HSJ)(model, x, y).x_adv
    if method == "art-boundary":
        return create_attack("boundary", seed=seed, **ART_BOUNDARY)(model, x, y).x_adv
    if method == "fb-hsj":
        return foolbox_attack("hsj", model, x, y, seed)
    if method == "fb-boundary":
        return foolbox_attack("boundary", model, x, y, seed)
    if method == "rs":
        return random_search_attack(model, x, y, seed)
    raise SystemExit(f"unknown method {method}")


# set name -> (attack method, what is attacked)
SETS: dict[str, tuple[str, str]] = {
    "art-hsj": ("art-hsj", "copies"),
    "art-boundary": ("art-boundary", "copies"),
    "fb-hsj": ("fb-hsj", "copies"),
    "fb-boundary": ("fb-boundary", "copies"),
    "rs": ("rs", "copies"),
    "smooth-hsj": ("art-hsj", "smoothed copies"),
    "ctl-c-hsj": ("art-hsj", "C alone"),
    "ctl-c-fb-boundary": ("fb-boundary", "C alone"),
    "ctl-tracer-hsj": ("art-hsj", "copies with another tracer"),
    "ctl-unrelated-hsj": ("art-hsj", "an unrelated model"),
}


def targets(kind: str, copies: CopySet, seed: int, unrelated: Path) -> list[tuple[nn.Module, int]]:
    m = copies.num_copies
    if kind == "copies":
        return [(copies.copy(i), i) for i in range(m)]
    if kind == "smoothed copies":
        return [(NoiseAveragedOracle(copies.copy(i), copies.tracer.input_shape, seed=seed + i), i) for i in range(m)]
    if kind == "copies with another tracer":
        c, h, w = copies.tracer.input_shape
        other = create_tracer("random", num_outputs=copies.tracer.num_outputs, in_channels=c, image_size=(h, w),
                              length_scale=1.5, gain=0.8, seed=1000)
        look_alike = CopySet(copies.classifier, other, copies.permutations, copies.params, blocks=copies.blocks)
        return [(look_alike.copy(i), -1) for i in range(m)]
    if kind == "an unrelated model":
        from advforensics.models import load_model

        return [(ClassifierOracle(load_model(unrelated)[0].eval()), -1)]
    return [(ClassifierOracle(copies.classifier), -1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", required=True, type=Path)
    p.add_argument("--data", default="mnist", help="data set whose test split is attacked (the record's C's)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--sets", required=True, help="comma-separated: " + ", ".join(SETS))
    p.add_argument("--per-source", type=int, default=45, help="images per attacked model")
    p.add_argument("--controls", type=int, default=200, help="images per control set")
    p.add_argument("--batch", type=int, default=15, help="images per attack call (progress is saved per call)")
    p.add_argument("--unrelated", type=Path, default=Path("runs/field/unrelated"),
                   help="zoo checkpoint of the unrelated model (ctl-unrelated-*)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    _, copies = load_copies(args.record)
    test = load_dataset(args.data, "test", data_dir=args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets.split(","):
        method, kind = SETS[name]
        path = args.out / f"{name}.npz"
        if path.is_file():
            log.info("%s exists", path)
            continue
        seed = args.seed + sum(map(ord, name))  # fresh images per set
        order = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(seed))
        models = targets(kind, copies, seed, args.unrelated)
        per_model = args.per_source if kind in ("copies", "smoothed copies") else -(-args.controls // len(models))
        parts: dict[str, list[Any]] = {k: [] for k in ("x_adv", "clean", "labels", "sources", "fooled")}
        cursor, start = 0, time.time()
        for model, source in models:
            idx, cursor = pick(model, test.images, test.labels, order, cursor, per_model)
            for chunk in idx.split(args.batch):
                x, y = test.images[chunk], test.labels[chunk]
                x_adv = craft(method, model, x, y, seed + int(chunk[0])).clamp(0, 1)
                with torch.no_grad():
                    fooled = model(x_adv).argmax(1) != y
                for key, value in (("x_adv", x_adv), ("clean", x), ("labels", y),
                                   ("sources", torch.full((len(y),), source)), ("fooled", fooled)):
                    parts[key].append(value)
            log.info("%s: source %d done (%.0f s)", name, source, time.time() - start)
        arrays = {k: torch.cat(v).numpy() for k, v in parts.items()}
        meta = {"set": name, "method": method, "target": kind, "seed": args.seed, "record": str(args.record),
                "data": args.data,
                "seconds": round(time.time() - start, 1), "attacked": int(len(arrays["labels"]))}
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
        log.info("wrote %s: %d/%d fool their target (%.0f s)", path, int(arrays["fooled"].sum()),
                 len(arrays["fooled"]), time.time() - start)


if __name__ == "__main__":
    main()
