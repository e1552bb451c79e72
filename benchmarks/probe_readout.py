"""How much the victim probe alone says: C&W kappa read off the true victim, and who is fooled.

For every C&W example in a corpus, the probe (side.py) gives kappa_v = margin_v / kappa_scale_v for
each victim v. Read at the true victim, how close is it to the grid's kappa? For every attack, how
often is the true victim the only one whose top class differs from the other victims'?

    python benchmarks/probe_readout.py --corpus runs/attribution/default100/corpus \
        --victims runs/attribution/victims5
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from advforensics.attribution.corpus import load_corpus
from advforensics.attribution.side import VictimProbe
from advforensics.attribution.victims import load_victims, probe_settings
from advforensics.reporting import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--victims", required=True, help="the corpus's victims (directory or comma list)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    models, info = load_victims(args.victims)
    settings = probe_settings(corpus.manifest, models, info)
    probe = VictimProbe(settings["probe_architectures"], settings["probe_kappa_scales"])
    probe.copy_weights(models, settings["probe_victims"])
    names = settings["probe_victims"]
    adversarial = np.flatnonzero(np.isin(corpus.columns["victim"], names))
    features, kappa = [], []
    for chunk in np.array_split(adversarial, max(1, len(adversarial) // 1024)):
        f, k = probe(corpus.float_images(chunk))
        features.append(f.numpy())
        kappa.append(k.numpy())
    fooled = np.concatenate(features)[:, :, 2] > 0.5  # (M, V)
    kappa_all = np.concatenate(kappa)
    victim = np.array([names.index(v) for v in corpus.columns["victim"][adversarial]])
    attack = corpus.columns["attack"][adversarial]
    truth = corpus.columns["hyper"][adversarial]
    at_victim = kappa_all[np.arange(len(victim)), victim]
    rows = []
    for index, name in enumerate(names):
        chosen = (attack == "cw-l2") & (victim == index)
        if chosen.any():
            error = at_victim[chosen] - truth[chosen]
            rows.append({"victim": name, "C&W examples": int(chosen.sum()),
                         "RMSE of kappa_v at the true victim": float(np.sqrt((error ** 2).mean())),
                         "median abs error": float(np.median(np.abs(error)))})
    print("C&W kappa read off the true victim's margin (no learning)\n")
    print(markdown_table(rows))
    rows = []
    for name in np.unique(attack):
        chosen = attack == name
        own = fooled[chosen][np.arange(chosen.sum()), victim[chosen]]
        rows.append({"attack": name, "examples": int(chosen.sum()),
                     "true victim fooled (%)": 100 * float(own.mean()),
                     "only the true victim fooled (%)": 100 * float((own & (fooled[chosen].sum(1) == 1)).mean()),
                     "mean victims fooled": float(fooled[chosen].sum(1).mean())})
    print("\n'fooled' = the victim's top class differs from the other victims' most probable class\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
