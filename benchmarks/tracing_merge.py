"""Merge tracing runs (OUT dirs of tracing_mnist.py with the same copies) into one table.

    python benchmarks/tracing_merge.py runs/tracing/hopskipjump_random runs/tracing/hopskipjump_random_b
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    dirs = [Path(a) for a in sys.argv[1:]]
    dol = np.concatenate([np.load(d / "examples.npz")["dol"] for d in dirs])
    sources = np.concatenate([np.load(d / "examples.npz")["sources"] for d in dirs])
    c_fooled = np.concatenate([np.load(d / "examples.npz")["c_fooled"] for d in dirs])
    transfer = np.concatenate([np.load(d / "examples.npz")["transfer"] for d in dirs])
    pred = dol.argmax(1)
    m = dol.shape[1]
    n = len(sources)
    acc = float((pred == sources).mean())
    half = 1.96 * np.sqrt(acc * (1 - acc) / n)
    out = {
        "runs": [str(d) for d in dirs], "examples": n, "tracing_accuracy": round(acc, 4),
        "ci95_normal": [round(acc - half, 4), round(acc + half, 4)],
        "per_source": [round(float((pred[sources == i] == i).mean()), 4) for i in range(m)],
        "per_source_n": [int((sources == i).sum()) for i in range(m)],
        "prediction_histogram": np.bincount(pred, minlength=m).tolist(),
        "c_fooled_rate": round(float(c_fooled.mean()), 4), "transfer_examples": int(transfer.sum()),
        "median_l2": [json.loads((d / "summary.json").read_text())["median_l2"] for d in dirs],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
