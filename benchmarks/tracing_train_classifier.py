"""Train the classifier C used by the tracing experiments (LeNet from the zoo, full MNIST).

    python benchmarks/tracing_train_classifier.py --out runs/tracing/lenet_mnist --epochs 4 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from advforensics.data import load_dataset
from advforensics.models import create_model, default_train_config, save_model, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/tracing/lenet_mnist"))
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="/work/shared/data")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    train = load_dataset("mnist", "train", data_dir=args.data_dir)
    test = load_dataset("mnist", "test", data_dir=args.data_dir)
    model = create_model(args.model, num_classes=10, in_channels=1, image_size=28, seed=args.seed)
    config = dataclasses.replace(default_train_config(args.model), epochs=args.epochs, seed=args.seed)
    result = train_model(model, train, test, config, progress=False)
    logging.info("result %s", result)
    save_model(model, args.out, card={"data": "mnist", "seed": args.seed, "result": str(result)}, overwrite=True)


if __name__ == "__main__":
    main()
