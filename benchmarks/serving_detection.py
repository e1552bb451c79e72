"""Catching attacks in progress at the endpoint: attacks and benign buyers through HTTP, then the log.

    python benchmarks/serving_detection.py --record runs/serving/copies --data-dir ../shared/data \
        --attackers 100 --benign 200 --seed 0 --out runs/serving/detection

The detector is calibrated on benign traffic only (simulated buyers drawing the seller's train images,
augmented; `queries calibrate`), so every attack row is held out. Then `advforensics serve` runs
the record's copies on loopback; each attacker is its own key and attacks one test image of its copy
through `RemoteCopy` (labels only); each benign buyer sends 1,000 augmented test images (batches of
25). Rows: the project's hard-label attacks (ART's HopSkipJump, Boundary and Sign-OPT through the
adapter; QEBA and SurFree by hand), foolbox's HopSkipJump and Boundary (another library), a random
search (another attack), HopSkipJump over noise-averaged queries and HopSkipJump with every batch
padded by as many benign images (attacker behaviours). A row's figure: the share of attackers flagged
within their first 1,000 queries (benign: flagged at all), with a 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from advforensics.attacks import create_attack
from advforensics.data import load_dataset
from advforensics.serving.client import RemoteCopy
from advforensics.serving.detection import calibrate_on_images, detect
from advforensics.serving.keys import BuyerKeys, write_keys
from advforensics.serving.local import LocalServer
from advforensics.serving.querylog import QueryLog
from advforensics.serving.traffic import benign_stream
from advforensics.tracing.record import read_record
from advforensics.utils import wilson_interval
from tracing_field_attacks import NoiseAveragedOracle, random_search_attack

log = logging.getLogger("serving_detection")
WITHIN = 1000


def _ours(name: str, **params) -> Callable:
    return lambda model, x, y, seed: create_attack(name, seed=seed, **params)(model, x, y).x_adv


def _foolbox(kind: str) -> Callable:
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        import foolbox as fb

        torch.manual_seed(seed)
        fmodel = fb.PyTorchModel(model.eval(), bounds=(0, 1))
        attack = {"hsj": lambda: fb.attacks.HopSkipJumpAttack(steps=4, max_gradient_eval_steps=500),
                  "hsj-linf": lambda: fb.attacks.HopSkipJumpAttack(steps=8, max_gradient_eval_steps=300,
                                                                   constraint="linf"),
                  "boundary": lambda: fb.attacks.BoundaryAttack(steps=300)}[kind]()
        raw, _, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
        return raw.detach()
    return run


class PaddedWithBenign(nn.Module):
    """An attacker hiding among benign images: every batch it sends is padded by as many benign ones."""

    def __init__(self, model: RemoteCopy, pool: torch.Tensor, seed: int) -> None:
        super().__init__()
        self.model, self.pool = model, pool
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.pool[torch.randint(len(self.pool), (len(x),), generator=self.generator)]
        shuffle = torch.randperm(2 * len(x), generator=self.generator)
        labels = self.model.labels(torch.cat([x, pad])[shuffle])
        own = torch.empty(len(x), dtype=torch.int64)
        mine = shuffle < len(x)
        own[shuffle[mine]] = labels[mine]
        return nn.functional.one_hot(own, self.model.num_classes).float()


ROWS: dict[str, Callable] = {
    "hopskipjump (ART, ours)": _ours("hopskipjump", max_iter=4, max_eval=500, init_eval=100),
    "boundary (ART, ours)": _ours("boundary", max_iter=60),
    "signopt (ART, ours)": _ours("signopt", max_queries=1500),
    "qeba (ours)": _ours("qeba", max_queries=1500),
    "surfree (ours)": _ours("surfree", max_queries=1500),
    "hopskipjump (foolbox)": _foolbox("hsj"),
    "boundary (foolbox)": _foolbox("boundary"),
    # not in the default run ("all"): a fresh held-out set for the family model, run with --rows
    "hopskipjump (foolbox Linf 8 steps)": _foolbox("hsj-linf"),
    "random search": lambda model, x, y, seed: random_search_attack(model, x, y, seed, directions=40, rounds=20),
}
BEHAVIOURS = ("hopskipjump, noise-averaged queries", "hopskipjump, padded with benign images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--attackers", type=int, default=100, help="per HopSkipJump row (others: half)")
    parser.add_argument("--benign", type=int, default=200, help="benign buyers (and a quarter with heavy repeats)")
    parser.add_argument("--rows", default="all", help="comma list of row names, all, or none (benign buyers only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--redetect", action="store_true", help="recalibrate and detect on --out's log only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    record = read_record(args.record, warn=False)
    train = load_dataset(args.data, split="train", data_dir=args.data_dir).images
    test = load_dataset(args.data, split="test", data_dir=args.data_dir)
    started = time.time()
    detector = calibrate_on_images(train, buyers=1000, queries=1000, false_flag_rate=0.001, seed=args.seed)
    log.info("calibrated: threshold %.4f (%.0f s)", detector.config.threshold, time.time() - started)
    if args.redetect:  # a new detector on an earlier run's log: no attack is run again
        plan = [(row, buyer, -1) for buyer, row in json.loads((args.out / "detection.json").read_text())["buyers"].items()]
        _report(plan, args.out / "queries.sqlite", detector, args, started, "redetect.json")
        return

    wanted = [r for r in ROWS if "Linf" not in r] + list(BEHAVIOURS) if args.rows == "all" else \
        [] if args.rows == "none" else args.rows.split(",")
    plan: list[tuple[str, str, int]] = []  # (row, buyer, copy)
    for row in wanted:
        n = args.attackers if row.startswith("hopskipjump") else max(args.attackers // 2, 1)
        plan += [(row, f"atk{len(plan) + i}", (len(plan) + i) % len(record.copies)) for i in range(n)]
    benign_rows = [("benign", 0.1, args.benign), ("benign, heavy repeats", 0.5, max(args.benign // 4, 1))]
    for row, _, n in benign_rows:
        plan += [(row, f"ben{len(plan) + i}", (len(plan) + i) % len(record.copies)) for i in range(n)]
    keys, plain = BuyerKeys(), {}
    for _, buyer, copy_index in plan:
        keys, plain[buyer] = keys.add(buyer, copy_index, record)
    write_keys(args.out / "keys.json", keys)
    log_path = args.out / "queries.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log_path}{suffix}").unlink(missing_ok=True)

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(test.images))
    cursor = 0
    with LocalServer(args.record, args.out / "keys.json", log_path, "--rate-limit", "1000000/second") as server:
        for n, (row, buyer, _) in enumerate(plan):
            remote = RemoteCopy(server.url, plain[buyer], num_classes=record.num_classes)
            seed = args.seed * 1000 + n
            if row.startswith("benign"):
                repeat_p = next(p for name, p, _ in benign_rows if name == row)
                stream = benign_stream(test.images, WITHIN, seed=seed, repeat_p=repeat_p)
                for start in range(0, len(stream), 25):
                    remote.labels(stream[start:start + 25])
            else:
                while True:  # an image its copy labels right (the attacker's first query)
                    index = int(order[cursor % len(order)])
                    cursor += 1
                    x, y = test.images[index:index + 1], test.labels[index:index + 1]
                    if int(remote.labels(x)[0]) == int(y[0]):
                        break
                if row == BEHAVIOURS[0]:
                    model = NoiseAveragedOracle(remote, tuple(x.shape[1:]), sigma=0.1, draws=8, seed=seed)
                    ROWS["hopskipjump (ART, ours)"](model, x, y, seed)
                elif row == BEHAVIOURS[1]:
                    ROWS["hopskipjump (ART, ours)"](PaddedWithBenign(remote, test.images, seed), x, y, seed)
                else:
                    ROWS[row](remote, x, y, seed)
            remote.close()
            if n % 20 == 0:
                log.info("%d / %d buyers (%s), %.0f s", n + 1, len(plan), row, time.time() - started)

    _report(plan, log_path, detector, args, started, "detection.json")


def _report(plan: list[tuple[str, str, int]], log_path: Path, detector, args, started: float, name: str) -> None:
    verdicts = {v.buyer: v for v in detect(QueryLog(log_path, create=False).read(), detector.config)}
    results = []
    print(f"Detector: threshold {detector.config.threshold:.4f} (k {detector.config.k}, "
          f"{detector.config.hits_to_flag} hits), calibrated on 1000 x 1000 benign train queries at a 0.1% "
          "false-flag rate\n")
    print("| buyers | n | median queries | flagged (%) [95% CI] | median query at flag |")
    print("| --- | --- | --- | --- | --- |")
    for row in dict.fromkeys(r for r, _, _ in plan):
        mine = [verdicts[b] for r, b, _ in plan if r == row]
        benign = row.startswith("benign")
        hits = sum(v.flagged and (benign or v.flagged_at < WITHIN) for v in mine)
        low, high = wilson_interval(hits, len(mine))
        at = [v.flagged_at for v in mine if v.flagged]
        results.append({"row": row, "n": len(mine), "flagged": hits, "median_queries": float(np.median([v.queries for v in mine])),
                        "median_flagged_at": float(np.median(at)) if at else None})
        print(f"| {row} | {len(mine)} | {np.median([v.queries for v in mine]):.0f} | {100 * hits / len(mine):.1f} "
              f"[{100 * low:.1f}, {100 * high:.1f}] | {np.median(at) if at else '-'} |")
    # the buyer -> row map lets benchmarks/serving_families.py read the same log afterwards
    (args.out / name).write_text(json.dumps({"detector": detector.config.to_dict(), "rows": results,
                                             "buyers": {b: r for r, b, _ in plan}, "seed": args.seed,
                                             "seconds": time.time() - started}, indent=2))


if __name__ == "__main__":
    main()
