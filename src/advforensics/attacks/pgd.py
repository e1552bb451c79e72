"""PGD (Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018), untargeted, L-inf ("pgd-linf") and L2 ("pgd-l2").

Each step: x <- Proj_{ball(x0, eps) and [0,1]}(x + alpha * d), where d = sign(g) for L-inf and
g / ||g||_2 for L2, g = grad_x CE(model(x), y). The same update order as ART's
ProjectedGradientDescentPyTorch (step, clip to [0, 1], project onto the ball), so with
random_start=False the two agree to float rounding (tests/test_attacks_whitebox.py).

Arguments (default), pixel units in [0, 1]:
    eps (8/255 L-inf, 1.0 L2): the budget.  alpha (2/255 L-inf, 0.2 L2): the step size.
    steps (10): gradient steps; queries = steps forward+backward passes per example.
    random_start (True): start from a uniform point in the ball (L2: uniform in the ball's volume).
    seed (0): seeds the random start, so the same seed gives the same examples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from advforensics.attacks.base import ATTACKS, Attack, Norm, ThreatModel, require


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _PGD(Attack):
    """Shared loop; subclasses define the step direction, the projection and the random start."""

    threat_model = ThreatModel.WHITE_BOX
    eps_max: float = 1.0

    def _check_params(self) -> None:
        p = self._params
        require(_is_number(p["eps"]) and 0.0 <= p["eps"] <= self.eps_max, "eps",
                f"must be a number in [0, {self.eps_max:g}] (pixel units), got {p['eps']!r}")
        require(_is_number(p["alpha"]) and p["alpha"] > 0, "alpha", f"must be a positive number, got {p['alpha']!r}")
        require(isinstance(p["steps"], int) and not isinstance(p["steps"], bool) and p["steps"] >= 1, "steps",
                f"must be an integer >= 1, got {p['steps']!r}")
        require(isinstance(p["random_start"], bool), "random_start", f"must be True or False, got {p['random_start']!r}")
        require(isinstance(p["seed"], int) and not isinstance(p["seed"], bool), "seed",
                f"must be an integer, got {p['seed']!r}")

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def _random_delta(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        eps, alpha, steps = float(self._params["eps"]), float(self._params["alpha"]), int(self._params["steps"])
        x_adv = x.clone()  # (B, C, H, W)
        if self._params["random_start"]:
            generator = torch.Generator().manual_seed(int(self._params["seed"]))
            x_adv = (x + self._random_delta(x, eps, generator).to(x.device, x.dtype)).clamp(0.0, 1.0)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")  # sum: each example's own gradient
            (grad,) = torch.autograd.grad(loss, x_adv)
            with torch.no_grad():
                stepped = (x_adv + alpha * self._direction(grad)).clamp(0.0, 1.0)
                x_adv = x + self._project(stepped - x, eps)
        return x_adv.detach(), torch.full((x.shape[0],), steps, dtype=torch.int64), {}


@ATTACKS.register("pgd-linf")
class PGDLinf(_PGD):
    """PGD with an L-inf budget: signed-gradient steps, coordinate-wise clipping to [-eps, eps]."""

    name = "pgd-linf"
    norm = Norm.LINF

    def __init__(self, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, seed: int = 0) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, random_start=random_start, seed=seed)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def _project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta.clamp(-eps, eps)

    def _random_delta(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        return (torch.rand(x.shape, generator=generator) * 2 - 1) * eps


@ATTACKS.register("pgd-l2")
class PGDL2(_PGD):
    """PGD with an L2 budget: unit-L2 gradient steps, rescaling onto the eps-sphere when outside."""

    name = "pgd-l2"
    norm = Norm.L2
    eps_max = 1e3

    def __init__(self, eps: float = 1.0, alpha: float = 0.2, steps: int = 10,
                 random_start: bool = True, seed: int = 0) -> None:
        super().__init__(eps=eps, alpha=alpha, steps=steps, random_start=random_start, seed=seed)

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        norms = grad.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (grad.dim() - 1)))  # (B, 1, 1, 1)
        return torch.where(norms > 0, grad / torch.where(norms > 0, norms, torch.ones_like(norms)),
                           torch.zeros_like(grad))

    def _project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        norms = delta.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (delta.dim() - 1)))  # (B, 1, 1, 1)
        factor = torch.where(norms > eps, eps / torch.where(norms > 0, norms, torch.ones_like(norms)),
                             torch.ones_like(norms))
        return delta * factor

    def _random_delta(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        batch, dims = x.shape[0], x[0].numel()
        direction = torch.randn((batch, dims), generator=generator)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        radius = eps * torch.rand((batch, 1), generator=generator) ** (1.0 / dims)
        return (direction * radius).view(x.shape)


__all__ = ["PGDLinf", "PGDL2"]
