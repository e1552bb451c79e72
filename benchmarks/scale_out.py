"""Scale-out on torchrun: corpus generation and attributor training, one process against several.

    python benchmarks/scale_out.py --victims runs/scale/zoo --data mnist --data-dir ../shared/data \
        --limit 300 --grid field --out runs/scale --ranks 2

Runs the commands as a user does (subprocesses, one torch thread per process):
1. `attribution corpus` in one process, then under `torchrun --nproc-per-node RANKS`; prints wall time,
   attacked images/s and the speed-up, and checks that the corpus ids and every shard's sha256 agree.
2. `attribution train` on that corpus in one process and on RANKS ranks (DistributedDataParallel),
   then `attribution evaluate` on each; prints attack / victim accuracy and hyper RMSE side by side.
Prints Markdown tables; --json writes them too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _run(args: list[str], ranks: int) -> float:
    """Run one advforensics command (under torchrun when ranks > 1); its wall time in seconds."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
        if ranks > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "advforensics", "--", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-3000:]}")
    return seconds


def _shard_hashes(corpus: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((corpus / "shards").iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victims", required=True)
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--grid", default="field")
    parser.add_argument("--shard-images", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-train", action="store_true", help="Measure the corpus generation only.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = ["--data", args.data, *(["--data-dir", args.data_dir] if args.data_dir else [])]
    corpus_args = ["attribution", "corpus", *data, "--limit", str(args.limit), "--victims", args.victims,
                   "--grid", args.grid, "--clean-class", "--shard-images", str(args.shard_images), "--threads", "1",
                   "--no-progress", "--seed", str(args.seed), "--device", "cpu"]
    corpora, seconds = {}, {}
    for ranks in (1, args.ranks):
        corpora[ranks] = args.out / f"corpus-{ranks}"
        seconds[ranks] = _run([*corpus_args, "--out", str(corpora[ranks]), "--json",
                               str(args.out / f"corpus-{ranks}.json")], ranks)
    reports = {r: json.loads((args.out / f"corpus-{r}.json").read_text()) for r in corpora}
    attacked = sum(t["attack_runs"] for t in reports[1]["throughput"])
    same = reports[1]["corpus_id"] == reports[args.ranks]["corpus_id"] and \
        _shard_hashes(corpora[1]) == _shard_hashes(corpora[args.ranks])
    print(f"## Corpus generation ({args.data}, {args.limit} clean images, grid {args.grid}, "
          f"{reports[1]['units_total']} units, {reports[1]['n_examples']} examples)\n")
    print("| processes | wall s | attacked images/s | speed-up | corpus id | identical to 1 process |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    rows = []
    for r in corpora:
        rows.append({"processes": r, "seconds": seconds[r], "images_per_s": attacked / seconds[r],
                     "speedup": seconds[1] / seconds[r], "corpus_id": reports[r]["corpus_id"]})
        print(f"| {r} | {seconds[r]:.1f} | {attacked / seconds[r]:.1f} | {seconds[1] / seconds[r]:.2f}x | "
              f"{reports[r]['corpus_id'][:12]} | {'yes' if same or r == 1 else 'NO'} |")

    if args.no_train:
        if args.json:
            args.json.write_text(json.dumps({"corpus": rows, "identical": same}, indent=2))
        raise SystemExit(0 if same else "the corpora differ")
    train_args = ["attribution", "train", "--corpus", str(corpora[1]), "--epochs", str(args.epochs), "--threads", "1",
                  "--no-progress", "--seed", str(args.seed), "--device", "cpu"]
    results = []
    for ranks in (1, args.ranks):
        model = args.out / f"mtaa-{ranks}.safetensors"
        train_s = _run([*train_args, "--out", str(model)], ranks)
        report = args.out / f"eval-{ranks}"
        _run(["attribution", "evaluate", "--corpus", str(corpora[1]), "--model", str(model), "--out", str(report),
              "--threads", "2", "--device", "cpu"], 1)
        metrics = json.loads((report / "metrics.json").read_text())
        results.append({"processes": ranks, "train_seconds": train_s, **{k: metrics.get(k) for k in
                        ("attack_accuracy", "victim_accuracy", "rmse", "n")}})
    print(f"\n## MTAA training ({args.epochs} epochs, DistributedDataParallel on {args.ranks} ranks)\n")
    print("| processes | train wall s | test rows | attack % | victim % | RMSE |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['processes']} | {r['train_seconds']:.1f} | {r['n']} | {100 * r['attack_accuracy']:.2f} | "
              f"{100 * r['victim_accuracy']:.2f} | {r['rmse']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"corpus": rows, "identical": same, "training": results}, indent=2))
    if not same:
        raise SystemExit("the corpora differ")


if __name__ == "__main__":
    main()
