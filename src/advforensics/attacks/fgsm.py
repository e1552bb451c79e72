"""FGSM (Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015).

L-infinity, white-box, one gradient: x_adv = clip(x + eps * sign(grad_x CE(model(x), y)), 0, 1).

Arguments (default):
    eps (8/255): the L-inf budget in [0, 1] pixel units. A budget quoted in 8-bit units (say
        "8/255") must be divided by 255: eps=8/255, not eps=8.

`fgsm_multi_eps` shares one gradient between many budgets. The attribution corpus needs 20 epsilons
per image; FGSM's gradient does not depend on eps, so one backward pass serves them all and the
outputs are bit-identical to one call per epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from advforensics.attacks.base import ATTACKS, Attack, AttackResult, Norm, ThreatModel, batched_predict, require
from advforensics.utils import check_images, check_labels


def _check_eps(eps: Any, argument: str = "eps") -> None:
    require(isinstance(eps, (int, float)) and not isinstance(eps, bool), argument, f"must be a number, got {eps!r}")
    require(0.0 <= float(eps) <= 1.0, argument,
            f"must be in [0, 1] pixel units, got {eps} (divide 8-bit budgets by 255: 8/255, not 8)")


def loss_sign_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sign of d CE(model(x), y) / dx, per example.  # (B, C, H, W) in {-1, 0, 1}

    The loss is summed over the batch so each example's gradient is its own (no 1/B scaling).
    """
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad.sign()


@ATTACKS.register("fgsm")
class FGSM(Attack):
    """Fast Gradient Sign Method, untargeted, L-inf; 1 forward+backward pass per example."""

    name = "fgsm"
    norm = Norm.LINF
    threat_model = ThreatModel.WHITE_BOX

    def __init__(self, eps: float = 8 / 255) -> None:
        super().__init__(eps=eps)

    def _check_params(self) -> None:
        _check_eps(self._params["eps"])

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        sign = loss_sign_gradient(model, x, y)  # (B, C, H, W)
        x_adv = (x + float(self._params["eps"]) * sign).clamp(0.0, 1.0)
        return x_adv, torch.ones(x.shape[0], dtype=torch.int64), {}


def _check_multi(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float]) -> None:
    require(len(epsilons) > 0, "epsilons", "must hold at least one value")
    for index, eps in enumerate(epsilons):
        _check_eps(eps, f"epsilons[{index}]")
    check_images(x, "x")
    check_labels(y, x.shape[0])


def fgsm_multi_eps_adv(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       epsilons: Sequence[float]) -> torch.Tensor:
    """FGSM examples at every eps from ONE gradient, without evaluating them.  # (E, B, C, H, W)

    Slice i is bit-identical to FGSM(eps=epsilons[i])(model, x, y).x_adv. Use this where the
    labels of the examples are computed later anyway (corpus generation); it is where the one-gradient
    trick pays most, since evaluating E*B examples costs E forward passes whatever the method.
    """
    _check_multi(model, x, y, epsilons)
    was_training = model.training
    model.eval()
    try:
        sign = loss_sign_gradient(model, x.detach(), y.detach())  # (B, C, H, W)
    finally:
        model.train(was_training)
    eps = torch.tensor([float(e) for e in epsilons], dtype=x.dtype, device=x.device)
    eps = eps.view(-1, *([1] * x.dim()))  # (E, 1, 1, 1, 1)
    # the same float ops as the single call: x + eps * sign, then clamp
    return (x.detach().unsqueeze(0) + eps * sign.unsqueeze(0)).clamp_(0.0, 1.0)


def fgsm_multi_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   epsilons: Sequence[float]) -> list[AttackResult]:
    """FGSM at every eps in `epsilons` from ONE gradient; result i equals FGSM(eps=epsilons[i])(model, x, y).

    Each result reports queries = 1 per example (the shared gradient), as a single call would.
    """
    x_advs = fgsm_multi_eps_adv(model, x, y, epsilons)  # (E, B, C, H, W)
    was_training = model.training
    model.eval()
    try:
        predicted = batched_predict(model, x_advs.flatten(0, 1)).view(len(epsilons), x.shape[0])  # (E, B)
    finally:
        model.train(was_training)
    results = []
    for eps, x_adv, pred in zip(epsilons, x_advs, predicted):
        delta = (x_adv - x).flatten(1)
        results.append(AttackResult(
            x_adv=x_adv, success=pred != y, l2=delta.norm(p=2, dim=1),
            linf=delta.abs().amax(dim=1) if delta.numel() else delta.sum(dim=1),
            queries=torch.ones(x.shape[0], dtype=torch.int64), predicted=pred,
            params=FGSM(eps=eps).params, extras={},
        ))
    return results


__all__ = ["FGSM", "fgsm_multi_eps", "fgsm_multi_eps_adv", "loss_sign_gradient"]
