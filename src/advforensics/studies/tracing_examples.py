"""The attack sets of the tracing study: adversarial examples crafted on each copy (or on a control
oracle), kept with their source and the attack's bookkeeping, cached under OUT/examples/."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advforensics import distributed
from advforensics.attacks import create_attack
from advforensics.errors import InputValidationError
from advforensics.utils import atomic_target

log = logging.getLogger(__name__)


@dataclass
class ExampleSet:
    """Successful adversarial examples with their source (-1: C alone) and attack bookkeeping."""

    x_adv: torch.Tensor
    clean: torch.Tensor
    labels: torch.Tensor
    sources: torch.Tensor
    l2: torch.Tensor
    queries: torch.Tensor
    attacked: int

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        arrays = {k: getattr(self, k).numpy() for k in ("x_adv", "clean", "labels", "sources", "l2", "queries")}
        with atomic_target(path) as tmp:
            np.savez_compressed(tmp, attacked=np.array(self.attacked), meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> ExampleSet | None:
        """The cached set, or None when absent; a cache made with other settings is an error."""
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            stored = json.loads(str(data["meta"]))
            if stored != meta:
                raise InputValidationError(f"{path} was made with other settings; use a new --out directory")
            tensors = {k: torch.from_numpy(data[k]) for k in ("x_adv", "clean", "labels", "sources", "l2", "queries")}
            return cls(attacked=int(data["attacked"]), **tensors)


class ClassifierOracle(nn.Module):
    """C alone as a black box (the control): softmax scores, always in eval mode."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.eval()

    def train(self, mode: bool = True) -> ClassifierOracle:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x.float()), dim=1)


class CollusionOracle(nn.Module):
    """Two buyers answer an attacker's queries in turn: a query goes to copy a or copy b by a hash of
    its pixels (deterministic, so the attacked function is fixed). Hard labels only are meaningful."""

    def __init__(self, copy_a: nn.Module, copy_b: nn.Module) -> None:
        super().__init__()
        self.copy_a, self.copy_b = copy_a, copy_b

    def train(self, mode: bool = True) -> CollusionOracle:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        route_b = (x.flatten(1).double().sum(1) * 1e6).floor().remainder(2).bool()  # (B,)
        return torch.where(route_b.unsqueeze(1), self.copy_b(x), self.copy_a(x))


def attack_sources(attack_name: str, params: dict[str, Any], models: list[nn.Module], source_ids: list[int],
                   per_source: int, images: torch.Tensor, labels: torch.Tensor, seed: int,
                   ranks: distributed.Ranks = distributed.SINGLE) -> ExampleSet:
    """Attack each model on `per_source` fresh test images it classifies correctly; keep successes.

    Under torchrun the ranks share the models (each attack call seeds itself, so the set is the one a
    single process makes) and every rank returns the whole set."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    attack = create_attack(attack_name, seed=seed, **params)
    picked: list[torch.Tensor] = []  # each source's images: cheap, and the same on every rank
    cursor = 0
    for model in models:
        chosen: list[int] = []
        while len(chosen) < per_source:
            if cursor >= len(order):
                raise InputValidationError("ran out of test images to attack; lower the example counts")
            batch = order[cursor:cursor + 4 * per_source]
            cursor += len(batch)
            with torch.no_grad():
                right = model(images[batch]).argmax(1) == labels[batch]
            chosen += batch[right].tolist()[: per_source - len(chosen)]
        picked.append(torch.tensor(chosen))
    made: dict[int, dict[str, torch.Tensor]] = {}
    for k in ranks.share(range(len(models))):
        idx, source = picked[k], source_ids[k]
        start = time.time()
        result = attack(models[k], images[idx], labels[idx])
        ok = result.success
        log.info("%s on source %d: %d/%d successful (%.0f s)", attack_name, source, int(ok.sum()), len(idx),
                 time.time() - start)
        made[k] = {"x_adv": result.x_adv[ok], "clean": images[idx][ok], "labels": labels[idx][ok],
                   "sources": torch.full((int(ok.sum()),), source), "l2": result.l2[ok],
                   "queries": result.queries[ok]}
    made = {k: part for share in ranks.all_gather(made) for k, part in share.items()}
    parts = [made[k] for k in range(len(models))]
    return ExampleSet(attacked=sum(len(idx) for idx in picked),
                      **{name: torch.cat([part[name] for part in parts]) for name in parts[0]})
