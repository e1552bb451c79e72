"""Train every zoo model on MNIST with its default settings and print a Markdown table.

Each model is trained by the real CLI (`advforensics models train ...`) in a subprocess, so the
table measures exactly what a user runs. Weights land in OUT_DIR/<model>.safetensors (+ .json card),
the CLI's measurements in OUT_DIR/<model>.train.json.

    python benchmarks/train_zoo.py --data-dir ../shared/data --out-dir runs/zoo2 --json runs/zoo2/zoo.json
    python benchmarks/train_zoo.py --models resnet18 --threads 2      # one model, 2 torch threads
    python benchmarks/train_zoo.py --reuse            # train only the models without a finished run
    python benchmarks/train_zoo.py --report-only      # table of the finished runs, train nothing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from advforensics.models import list_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="Subset of the zoo [all].")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--out-dir", default="runs/zoo2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training run.")
    parser.add_argument("--reuse", action="store_true",
                        help="Do not train models whose OUT_DIR/<model>.train.json exists; report it.")
    parser.add_argument("--report-only", action="store_true",
                        help="Train nothing; tabulate the finished runs in OUT_DIR.")
    parser.add_argument("--json", default=None, help="Also write the rows as JSON here.")
    args = parser.parse_args()

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models or list_models():
        result_path = out_dir / f"{name}.train.json"
        if args.report_only and not result_path.is_file():
            print(f"{name}: no finished run in {out_dir}", file=sys.stderr)
            continue
        if not (args.reuse or args.report_only) or not result_path.is_file():
            command = [sys.executable, "-m", "advforensics.cli.main", "models", "train", "--model", name,
                       "--data", args.data, "--data-dir", args.data_dir, "--seed", str(args.seed),
                       "--threads", str(args.threads), "--out", str(out_dir / name), "--overwrite",
                       "--no-progress", "--json", str(result_path)]
            print("$ " + " ".join(command[2:]), file=sys.stderr, flush=True)
            subprocess.run(command, check=True)
        rows.append(json.loads(result_path.read_text()))

    print("\n| model | revision | width | params | epochs | shift | threads | train wall time (s) "
          "| train CPU time (s) | test accuracy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:  # runs from before revision 2 have no "revision" / "shift" (= 1 / 0)
        print(f"| {r['model']} | {r.get('revision', 1)} | {r['width']:g} | {r['params']:,} | {r['epochs']} | "
              f"{r.get('shift', 0)} | {r['threads']} | "
              f"{r['train_seconds']:.0f} | {r['train_cpu_seconds']:.0f} | {100 * r['test_accuracy']:.2f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
