"""An attack campaign: one attack on the first N images of a data split that the target classifies
correctly, in batches, with the figures `attacks run` reports (success, median norms, queries, speed)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from advforensics import distributed
from advforensics.attacks.base import Attack, batched_predict
from advforensics.errors import InputValidationError

log = logging.getLogger(__name__)


@dataclass
class Campaign:
    """What the attack made, one row per attacked image (all tensors share the first dimension)."""

    x_adv: torch.Tensor
    success: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    queries: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor  # each row's index in the data split
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        ok = self.success
        n = len(self.labels)
        figures = {"n": n, "success_rate": float(ok.float().mean()),
                   "median_l2_success": float(self.l2[ok].median()) if ok.any() else None,
                   "median_linf_success": float(self.linf[ok].median()) if ok.any() else None,
                   "mean_queries": float(self.queries.float().mean()), "seconds": self.seconds,
                   "images_per_second": n / self.seconds if self.seconds > 0 else None}
        if "reached" in self.extras:
            figures["reached_rate"] = float(self.extras["reached"].float().mean())
        if "classifier_fooled" in self.extras:
            fooled = self.extras["classifier_fooled"]
            figures["classifier_fooled_rate_success"] = float(fooled[ok].float().mean()) if ok.any() else None
        return figures

    def save(self, path: str | Path, params: dict[str, Any], meta: dict[str, Any], overwrite: bool = False) -> Path:
        """The evidence file: x_adv, success, labels, meta, and every per-row figure (advforensics.evidence)."""
        import json

        import numpy as np

        from advforensics.evidence import save_evidence

        return save_evidence(path, self.x_adv.float(), success=self.success, labels=self.labels, meta=meta,
                             overwrite=overwrite,
                             extras={"predicted": self.predicted, "l2": self.l2, "linf": self.linf,
                                     "queries": self.queries, "indices": self.indices,
                                     "params_json": np.array(json.dumps(params, default=str)),
                                     **{f"extra_{key}": value for key, value in self.extras.items()}})


def run_campaign(attack: Attack, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, n: int,
                 batch_size: int = 128, shape: tuple[int, int, int] | None = None) -> Campaign:
    """Attack the first `n` images of (images, labels) that `model` classifies correctly.

    shape: the (C, H, W) the model takes; images of another shape fail here in one line.
    Under torchrun the ranks share the batches (each attack call seeds itself: the same rows as one
    process) and every rank returns the whole campaign."""
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise InputValidationError(f"the images are {tuple(images.shape[1:])}, the model expects {tuple(shape)}")
    correct = (batched_predict(model, images) == labels).nonzero().squeeze(1)
    indices = correct[:n]
    if len(indices) == 0:
        raise InputValidationError("the model classifies none of the images correctly")
    if len(indices) < n:
        log.warning("only %d correctly classified examples", len(indices))
    x_all, y_all = images[indices], labels[indices]
    batches = list(zip(x_all.split(batch_size), y_all.split(batch_size)))
    ranks = distributed.current()
    start = time.perf_counter()
    made = {k: attack(model, *batches[k]) for k in tqdm(ranks.share(range(len(batches))), desc=attack.name,
                                                          unit="batch", disable=len(batches) <= 1 or not ranks.is_main)}
    made = {k: result for share in ranks.all_gather(made) for k, result in share.items()}
    results = [made[k] for k in range(len(batches))]
    seconds = time.perf_counter() - start
    cat = {name: torch.cat([getattr(r, name) for r in results])
           for name in ("x_adv", "success", "l2", "linf", "queries", "predicted")}
    extras = {key: torch.cat([r.extras[key] for r in results]) for key in results[0].extras}
    return Campaign(labels=y_all, indices=indices, extras=extras, seconds=seconds, **cat)
