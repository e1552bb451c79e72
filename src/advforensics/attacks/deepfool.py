"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, "DeepFool: a simple and accurate method to fool deep
neural networks", CVPR 2016), untargeted, L2, white-box.

Each step linearises the logits around x: for every candidate class k, f_k = z_k - z_label and
w_k = grad(z_k - z_label); the nearest linearised boundary is k* = argmin |f_k| / ||w_k|| and the step
is |f_k*| / ||w_k*||^2 * w_k*. An example stops once its label changes; at the end the total
perturbation is scaled by (1 + overshoot) and clipped to [0, 1].

The update follows ART's `DeepFool` step for step (candidate classes: the union over the batch of each
example's nb_grads most probable classes; steps scaled by the clip range; tol 1e-8), so the two agree
to float rounding (tests/test_attacks_whitebox.py). The gain is speed: the class gradients of a batch
come from one backward pass per candidate class in torch, where ART loops in NumPy; on the field
corpus's victims that is the difference between DeepFool costing more than C&W and costing less than PGD.

Arguments (default):
    overshoot (0.02): ART's `epsilon`.  max_iter (100).  nb_grads (10): candidate classes per example.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advforensics.attacks.base import ATTACKS, Attack, Norm, ThreatModel, require

TOL = 1e-8


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _class_gradients(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, K), gradients (B, L, C, H, W) of the logits of `classes` (L,) at x)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grads = [torch.autograd.grad(logits[:, int(c)].sum(), x, retain_graph=i < len(classes) - 1)[0]
             for i, c in enumerate(classes)]
    return logits.detach(), torch.stack(grads, dim=1)


@ATTACKS.register("deepfool")
class DeepFool(Attack):
    """DeepFool on the logits; queries = forward+backward rounds per example."""

    name = "deepfool"
    norm = Norm.L2
    threat_model = ThreatModel.WHITE_BOX

    def __init__(self, overshoot: float = 0.02, max_iter: int = 100, nb_grads: int = 10) -> None:
        super().__init__(overshoot=overshoot, max_iter=max_iter, nb_grads=nb_grads)

    def _check_params(self) -> None:
        p = self._params
        require(isinstance(p["overshoot"], (int, float)) and not isinstance(p["overshoot"], bool)
                and p["overshoot"] >= 0, "overshoot", f"must be a number >= 0, got {p['overshoot']!r}")
        require(_is_count(p["max_iter"]), "max_iter", f"must be an integer >= 1, got {p['max_iter']!r}")
        require(_is_count(p["nb_grads"]), "nb_grads", f"must be an integer >= 1, got {p['nb_grads']!r}")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        overshoot, max_iter, nb_grads = (float(self._params["overshoot"]), int(self._params["max_iter"]),
                                         int(self._params["nb_grads"]))
        batch = len(x)
        with torch.no_grad():
            logits0 = model(x)
        n_classes = logits0.shape[1]
        classes = torch.unique(logits0.argsort(dim=1, descending=True)[:, :nb_grads]) if nb_grads < n_classes \
            else torch.arange(n_classes, device=x.device)
        label = logits0.argmax(1)  # DeepFool leaves the predicted class (as ART's does), not y
        position = torch.searchsorted(classes, label)  # (B,) index of the label among the candidates
        current = x.clone()
        logits, grads = _class_gradients(model, current, classes)
        active = torch.ones(batch, dtype=torch.bool, device=x.device)
        rounds = torch.zeros(batch, dtype=torch.int64)
        shape = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(max_iter):
            idx = active.nonzero().squeeze(1)  # only examples still on their label move (and cost gradients)
            if len(idx) == 0:
                break
            sub = torch.arange(len(idx), device=x.device)
            grad_diff = grads - grads[sub, position[idx]].unsqueeze(1)  # (b, L, C, H, W)
            f_diff = logits[:, classes] - logits[sub, label[idx]].unsqueeze(1)  # (b, L)
            norm = grad_diff.flatten(2).norm(dim=2) + TOL
            value = f_diff.abs() / norm
            value[sub, position[idx]] = float("inf")
            nearest = value.argmin(dim=1)  # (b,)
            w = grad_diff[sub, nearest]  # (b, C, H, W)
            r = (f_diff[sub, nearest].abs() / (w.flatten(1).norm(dim=1) ** 2 + TOL)).view(shape) * w
            current[idx] = (current[idx] + r).clamp(0.0, 1.0)  # clip range (0, 1): ART's scale factor is 1
            rounds[idx.cpu()] += 1
            logits, grads = _class_gradients(model, current[idx], classes)
            still = logits.argmax(1) == label[idx]
            active[idx[~still]] = False
            logits, grads = logits[still], grads[still]
        x_adv = (x + (1 + overshoot) * (current - x)).clamp(0.0, 1.0)
        return x_adv.detach(), rounds + 1, {}


__all__ = ["DeepFool"]
