"""Corpus variants implemented by the Adversarial Robustness Toolbox (ART) instead of the project.

Evidence from another implementation of the same family is how attribution is tested "in the field"
(issue 11): an attributor that learned the project's FGSM and not FGSM would fail on ART's. ART also
supplies the families the project does not implement (DeepFool, Square), which the open-set study
needs as attacks an attributor has never seen.

Parameters are ART's own names (`eps_step`, `max_iter`, `num_random_init`, `confidence`, ...), passed
through; eps (FGSM/PGD/Square) and kappa (C&W's `confidence`, logits) come from the grid value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from advforensics.errors import InputValidationError


def art_classifier(model: nn.Module, x: torch.Tensor) -> Any:
    """An ART PyTorchClassifier around `model` for images shaped like `x`, clip values [0, 1]."""
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        n_classes = int(model(x[:1].float()).shape[1])
    device_type = "gpu" if x.device.type == "cuda" else "cpu"
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                             nb_classes=n_classes, clip_values=(0.0, 1.0), device_type=device_type)


def make_art_attack(family: str, classifier: Any, value: float, params: dict[str, Any], batch_size: int) -> Any:
    """The ART attack object for one grid value of `family`."""
    from art.attacks.evasion import (CarliniL2Method, DeepFool, FastGradientMethod, ProjectedGradientDescentNumpy,
                                     SquareAttack)

    p = dict(params)
    if family == "fgsm":
        return FastGradientMethod(classifier, norm=np.inf, eps=value / 255.0, batch_size=batch_size, **p)
    if family == "pgd-linf":
        if "eps_step_ratio" in p:  # step as a fraction of eps, like the project's alpha_ratio
            p["eps_step"] = float(p.pop("eps_step_ratio")) * value / 255.0
        elif "eps_step255" in p:
            p["eps_step"] = float(p.pop("eps_step255")) / 255.0
        return ProjectedGradientDescentNumpy(classifier, norm=np.inf, eps=value / 255.0, batch_size=batch_size,
                                             verbose=False, **p)
    if family == "cw-l2":
        return CarliniL2Method(classifier, confidence=float(value), batch_size=batch_size, verbose=False, **p)
    if family == "deepfool":
        return DeepFool(classifier, batch_size=batch_size, verbose=False, **p)
    if family == "square-linf":
        return SquareAttack(classifier, norm=np.inf, eps=value / 255.0, batch_size=batch_size, verbose=False, **p)
    raise InputValidationError(f"ART runner has no family {family!r}")


def run_art_values(family: str, values: tuple[float, ...], params: dict[str, Any], model: nn.Module,
                   x: torch.Tensor, y: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """x_adv (B, C, H, W) in [0, 1] for each value, made by ART on (x, y) (untargeted, true labels)."""
    classifier = art_classifier(model, x)
    x_np = x.detach().cpu().numpy().astype(np.float32)
    y_np = y.detach().cpu().numpy()
    out = []
    for value in values:
        np.random.seed(seed % (2 ** 32))  # ART draws random starts and Square's squares from NumPy's global state
        attack = make_art_attack(family, classifier, float(value), params, batch_size=len(x_np))
        labels = y_np if family != "deepfool" else None  # DeepFool takes no labels (it leaves the predicted class)
        x_adv = attack.generate(x_np, y=labels) if labels is not None else attack.generate(x_np)
        out.append(torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).to(x.device))
    return out


__all__ = ["art_classifier", "make_art_attack", "run_art_values"]
