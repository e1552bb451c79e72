"""The spread of a shuffled-label control on one split, from cheap library models.

A shuffled-label attributor's test accuracy should sit near the majority class, but how far from it
can luck carry a model on one split? This trains scikit-learn's k-nearest-neighbours and gradient
boosting on the pixel histogram (side.py) with training labels permuted by several seeds, and
prints their attack accuracy on the test split beside the majority-class rate.

    python benchmarks/control_spread.py --corpus runs/attribution/default100/corpus --seed 0 --shuffles 4
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neighbors import KNeighborsClassifier

from advforensics.attribution.corpus import load_corpus, split_by_clean_image
from advforensics.attribution.side import pixel_histogram
from advforensics.reporting import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (as in train --seed)")
    parser.add_argument("--shuffles", type=int, default=4)
    args = parser.parse_args()
    corpus = load_corpus(args.corpus)
    features = pixel_histogram(corpus.float_images()).numpy()
    train, test = split_by_clean_image(corpus.columns["clean_index"], 0.2, args.seed)
    attack = corpus.attack_targets()
    rows = []
    for shuffle in range(args.shuffles):
        labels = attack[train][np.random.default_rng(shuffle).permutation(int(train.sum()))]
        for name, model in (("kNN (k=15)", KNeighborsClassifier(15)),
                            ("gradient boosting", HistGradientBoostingClassifier(max_iter=100, random_state=0))):
            predicted = model.fit(features[train], labels).predict(features[test])
            accuracy = 100 * float((predicted == attack[test]).mean())
            rows.append({"shuffle": shuffle, "model": name, "attack acc (%)": accuracy})
    print(f"majority class on the test split: {100 * np.bincount(attack[test]).max() / test.sum():.2f}%\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
