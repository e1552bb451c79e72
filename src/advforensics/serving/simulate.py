"""The seller's simulation of buyers for the family model: the project's attacks and benign traffic,
recorded as the endpoint would log them (QueryRecorder), each family at a few settings of its budget.

Only the project's own attack code is simulated here; the other libraries' implementations (foolbox)
and other attacks (a random search) are what the family model is measured on, never fitted on.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from advforensics.attacks import create_attack
from advforensics.serving.families import FamilyModel, QueryRecorder, QuerySequence, fit_families, sequence_features
from advforensics.serving.traffic import benign_stream

log = logging.getLogger(__name__)

BENIGN = "benign"
# family -> settings simulated (each sequence draws one); budgets near what an attacker spends first
FAMILY_SETTINGS: dict[str, list[dict[str, object]]] = {
    "hopskipjump": [{"max_iter": 4, "max_eval": 500, "init_eval": 100}, {"max_iter": 8, "max_eval": 300, "init_eval": 50},
                    {"max_iter": 3, "max_eval": 1000, "init_eval": 200}],
    "boundary": [{"max_iter": 60}, {"max_iter": 120, "num_trial": 10, "sample_size": 10}],
    "signopt": [{"max_queries": 1500}, {"max_queries": 1500, "k": 100}],
    "qeba": [{"max_queries": 1500}, {"max_queries": 1500, "init_eval": 50, "max_eval": 500}],
    "surfree": [{"max_queries": 1500}, {"max_queries": 1500, "num_angles": 5}],
}


def simulate_sequence(family: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting: dict[str, object],
                      seed: int, max_batch: int = 256) -> QuerySequence:
    """The queries of one attack of `family` (or a benign buyer) on one image, as logged."""
    recorder = QueryRecorder(model, tuple(x.shape[1:]), max_batch=max_batch)
    recorder(x)  # the attacker's first query: does the copy label it right?
    create_attack(family, seed=seed, **setting)(recorder, x, y)
    return recorder.sequence()


def simulate_families(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, per_family: int, seed: int = 0,
                      window: int = 1000, families: dict[str, list[dict[str, object]]] | None = None
                      ) -> tuple[np.ndarray, list[str]]:
    """(features (n, F), family names): `per_family` attacks of each family on images `model` labels
    right, plus as many benign buyers drawing from `images`."""
    families = FAMILY_SETTINGS if families is None else families
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        right = torch.nonzero(model(images).argmax(1) == labels).flatten().numpy()
    features, names = [], []
    for f, (family, settings) in enumerate(sorted(families.items())):
        for i in range(per_family):
            index = int(rng.choice(right))
            setting = settings[i % len(settings)]
            sequence = simulate_sequence(family, model, images[index:index + 1], labels[index:index + 1], setting,
                                         seed=seed * 7919 + f * 1000 + i)
            features.append(sequence_features(sequence, window))
            names.append(family)
        log.info("simulated %d %s sequences", per_family, family)
    for i in range(per_family):
        stream = benign_stream(images, window, seed=seed * 7919 + 900_000 + i, repeat_p=0.1 + 0.4 * (i % 2))
        recorder = QueryRecorder(model, tuple(images.shape[1:]))
        for start in range(0, window, 25):
            recorder(stream[start:start + 25])
        features.append(sequence_features(recorder.sequence(), window))
        names.append(BENIGN)
    return np.stack(features), names


def fit_family_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, per_family: int = 40,
                     seed: int = 0, window: int = 1000, min_confidence: float = 0.5) -> FamilyModel:
    features, names = simulate_families(model, images, labels, per_family, seed=seed, window=window)
    return fit_families(features, names, window=window, min_confidence=min_confidence, seed=seed,
                        info={"per_family": per_family, "seed": seed, "settings": FAMILY_SETTINGS})


__all__ = ["BENIGN", "FAMILY_SETTINGS", "fit_family_model", "simulate_families", "simulate_sequence"]
