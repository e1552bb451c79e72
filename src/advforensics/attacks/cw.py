"""Carlini-Wagner L2 (Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
IEEE S&P 2017), untargeted, made so that the confidence kappa really shapes the example.

Objective per example, minimised with Adam over the tanh variable w (x' = (tanh(w) + 1) / 2, so
x' stays in [0, 1]; w starts at atanh((2x - 1) * 0.999999) so pixels at exactly 0 or 1 can move):

    ||x' - x||_2^2 + c * max(kappa_eff - margin(x'), 0),   margin = max_{j != y} z_j - z_y  (logits z)

with a per-example binary search on c (start c0, multiply by 10 until the margin reaches kappa_eff,
then bisect). The attack returns, per example, the smallest-L2 iterate whose margin >= kappa_eff
(and which is misclassified), and otherwise the largest-margin iterate with extras["reached"] =
False: never silently the clean image (torchattacks' and ART's habit, which the attribution lab
notes found made kappa meaningless).

kappa and the logit scale: the largest margin a victim can reach anywhere in [0, 1]^d is capped by
its logit scale (lab notes: median 18 for a narrow ResNet-18, 38 for a LeNet), so the nominal grid
kappa = 5..100 collapses on small-scale victims. `kappa_scale` maps it: kappa_eff = kappa *
kappa_scale. Keep the nominal kappa as the corpus label and set kappa_scale = K / 100 with K near the
10th percentile of the victim's reachable margin; `kappa_scale_for(model, x, y)` measures that.
(Dividing the logits by a temperature T is the same as kappa_scale = 1 / T up to the c search.)

Arguments (default): kappa (0.0) confidence in logit units before scaling; kappa_scale (1.0);
c0 (1.0) initial trade-off constant; search_steps (6) binary-search rounds on c; steps (200) Adam
steps per round; lr (0.05) Adam learning rate. Queries = search_steps * steps forward+backward
passes per example.

extras (all (B,)): margin (achieved, on the returned x_adv), reached (bool: margin >= kappa_eff),
c (the constant that produced the returned iterate), kappa_eff.

A grid of kappas reuses work (`cw_kappa_sweep`): the L2-minimal example moves continuously with
kappa, so each kappa after the smallest starts from the previous kappa's example and constant c and
needs only a short schedule (`warm_search_steps` x `warm_steps`) instead of a search from the clean
image. The examples are not bit-identical to independent calls; benchmarks/cw_sweep.py measures the
speed, the reached rate and the L2 against independent calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from advforensics.attacks.base import ATTACKS, Attack, AttackResult, Norm, ThreatModel, require
from advforensics.utils import check_images, check_labels

_TANH_SHRINK = 0.999999


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Best other logit minus the true logit; > 0 means misclassified.  # (B, K) -> (B,)"""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(dim=1) - true


def _to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * x - 1) * _TANH_SHRINK)


def _from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


@ATTACKS.register("cw-l2")
class CarliniWagnerL2(Attack):
    """C&W-L2 with a kappa that shapes the example; batched over examples, per-example c search."""

    name = "cw-l2"
    norm = Norm.L2
    threat_model = ThreatModel.WHITE_BOX

    def __init__(self, kappa: float = 0.0, kappa_scale: float = 1.0, c0: float = 1.0,
                 search_steps: int = 6, steps: int = 200, lr: float = 0.05) -> None:
        super().__init__(kappa=kappa, kappa_scale=kappa_scale, c0=c0, search_steps=search_steps,
                         steps=steps, lr=lr)
        self._warm: tuple[torch.Tensor, torch.Tensor] | None = None  # (start images, start c)

    def starting_from(self, start: torch.Tensor, c_start: torch.Tensor) -> CarliniWagnerL2:
        """A copy of this attack whose search starts at `start` (B, C, H, W) with constant `c_start` (B,).

        Used by `cw_kappa_sweep` to continue from a smaller kappa's examples; each search round
        restarts Adam from `start` instead of the clean image. Non-finite or non-positive c_start
        entries fall back to c0.
        """
        check_images(start, "start")
        require(c_start.shape == (start.shape[0],), "c_start", f"must have shape ({start.shape[0]},), got "
                f"{tuple(c_start.shape)}")
        clone = CarliniWagnerL2(**self._params)
        c_start = c_start.detach().to(start.dtype)
        good = torch.isfinite(c_start) & (c_start > 0)
        clone._warm = (start.detach(), torch.where(good, c_start, torch.full_like(c_start, float(self._params["c0"]))))
        return clone

    def _check_params(self) -> None:
        p = self._params
        require(_is_number(p["kappa"]) and p["kappa"] >= 0, "kappa", f"must be a number >= 0, got {p['kappa']!r}")
        require(_is_number(p["kappa_scale"]) and p["kappa_scale"] > 0, "kappa_scale",
                f"must be a positive number, got {p['kappa_scale']!r}")
        require(_is_number(p["c0"]) and p["c0"] > 0, "c0", f"must be a positive number, got {p['c0']!r}")
        require(_is_count(p["search_steps"]), "search_steps", f"must be an integer >= 1, got {p['search_steps']!r}")
        require(_is_count(p["steps"]), "steps", f"must be an integer >= 1, got {p['steps']!r}")
        require(_is_number(p["lr"]) and p["lr"] > 0, "lr", f"must be a positive number, got {p['lr']!r}")

    @property
    def kappa_eff(self) -> float:
        return float(self._params["kappa"]) * float(self._params["kappa_scale"])

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        p = self._params
        batch, kappa = x.shape[0], self.kappa_eff
        if self._warm is None:
            w0 = _to_tanh_space(x)  # (B, C, H, W)
            c = torch.full((batch,), float(p["c0"]), dtype=x.dtype, device=x.device)
        else:
            start, c = self._warm
            require(start.shape == x.shape, "start", f"must have the shape of x {tuple(x.shape)}, got "
                    f"{tuple(start.shape)}")
            w0, c = _to_tanh_space(start.to(x.device).clamp(0, 1)), c.to(x.device)
        lower = torch.zeros_like(c)
        upper = torch.full_like(c, float("inf"))
        best_l2 = torch.full_like(c, float("inf"))  # smallest L2 among iterates that reach kappa
        best_adv, best_c = x.clone(), torch.full_like(c, float("nan"))
        top_margin = torch.full_like(c, float("-inf"))  # fallback: the largest-margin iterate
        top_adv, top_c = x.clone(), torch.full_like(c, float("nan"))
        shape = (-1,) + (1,) * (x.dim() - 1)

        for _ in range(int(p["search_steps"])):
            w = w0.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([w], lr=float(p["lr"]))
            reached_round = torch.zeros(batch, dtype=torch.bool, device=x.device)
            for _ in range(int(p["steps"])):
                x_new = _from_tanh_space(w)  # (B, C, H, W)
                logits = model(x_new)  # (B, K)
                margin = logit_margin(logits, y)  # (B,)
                l2_sq = (x_new - x).flatten(1).pow(2).sum(dim=1)  # (B,)
                loss = l2_sq + c * (kappa - margin).clamp_min(0.0)
                # autograd.grad, not backward: the model's parameters never receive .grad
                (w.grad,) = torch.autograd.grad(loss.sum(), w)
                with torch.no_grad():
                    l2 = l2_sq.sqrt()
                    reached = (margin >= kappa) & (logits.argmax(dim=1) != y)
                    better = reached & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best_adv = torch.where(better.view(shape), x_new, best_adv)
                    best_c = torch.where(better, c, best_c)
                    reached_round |= reached
                    higher = margin > top_margin
                    top_margin = torch.where(higher, margin, top_margin)
                    top_adv = torch.where(higher.view(shape), x_new, top_adv)
                    top_c = torch.where(higher, c, top_c)
                optimiser.step()
            upper = torch.where(reached_round, torch.minimum(upper, c), upper)
            lower = torch.where(reached_round, lower, torch.maximum(lower, c))
            c = torch.where(torch.isfinite(upper), (lower + upper) / 2, c * 10)

        found = torch.isfinite(best_l2)  # (B,)
        x_adv = torch.where(found.view(shape), best_adv, top_adv).detach()
        with torch.no_grad():
            achieved = logit_margin(model(x_adv), y)
        queries = torch.full((batch,), int(p["search_steps"]) * int(p["steps"]), dtype=torch.int64)
        extras = {"margin": achieved, "reached": found, "c": torch.where(found, best_c, top_c),
                  "kappa_eff": torch.full_like(c, kappa)}
        return x_adv, queries, extras


def cw_kappa_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kappas: Sequence[float], *,
                   warm_search_steps: int = 2, warm_steps: int = 100, **params: Any) -> list[AttackResult]:
    """C&W-L2 at every kappa in `kappas` on the same (x, y), reusing work along the kappa axis.

    The smallest kappa runs the full schedule of `params` (CarliniWagnerL2's keywords except kappa);
    each larger kappa starts from the previous one's examples and constants and runs
    warm_search_steps x warm_steps. Returns one AttackResult per kappa, in the order given; `queries`
    counts the whole chain that produced each example.
    """
    require(len(kappas) > 0, "kappas", "needs at least one value")
    require(_is_count(warm_search_steps), "warm_search_steps", f"must be an integer >= 1, got {warm_search_steps!r}")
    require(_is_count(warm_steps), "warm_steps", f"must be an integer >= 1, got {warm_steps!r}")
    require("kappa" not in params, "kappa", "is given by `kappas`")
    results: list[AttackResult | None] = [None] * len(kappas)
    previous: AttackResult | None = None
    for i in sorted(range(len(kappas)), key=lambda j: float(kappas[j])):
        if previous is None:
            result = CarliniWagnerL2(kappa=float(kappas[i]), **params)(model, x, y)
        else:
            warm = {**params, "search_steps": warm_search_steps, "steps": warm_steps}
            attack = CarliniWagnerL2(kappa=float(kappas[i]), **warm).starting_from(previous.x_adv, previous.extras["c"])
            result = attack(model, x, y)
            result.queries = result.queries + previous.queries
        results[i] = previous = result
    return [r for r in results if r is not None]


def reachable_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 200,
                     lr: float = 0.1) -> torch.Tensor:
    """The largest logit margin (best other minus true) found anywhere in [0, 1]^d, per example.  # (B,)

    Adam on the tanh variable maximising the margin with no distance penalty: a lower bound on the
    victim's reachable margin, which caps any useful kappa_eff.
    """
    check_images(x, "x")
    check_labels(y, x.shape[0])
    require(_is_count(steps), "steps", f"must be an integer >= 1, got {steps!r}")
    require(_is_number(lr) and lr > 0, "lr", f"must be a positive number, got {lr!r}")
    was_training = model.training
    model.eval()
    try:
        w = _to_tanh_space(x.detach()).requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=lr)
        best = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
        for _ in range(steps):
            margin = logit_margin(model(_from_tanh_space(w)), y)
            best = torch.maximum(best, margin.detach())
            (w.grad,) = torch.autograd.grad(-margin.sum(), w)
            optimiser.step()
        with torch.no_grad():
            best = torch.maximum(best, logit_margin(model(_from_tanh_space(w)), y))
    finally:
        model.train(was_training)
    return best


def kappa_scale_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, quantile: float = 0.1,
                    nominal_max: float = 100.0, steps: int = 200, lr: float = 0.1) -> float:
    """kappa_scale that maps the nominal kappa `nominal_max` to the `quantile` of the reachable margin.

    With the default, nominal kappa 100 asks for a margin that 90% of these examples can reach.
    """
    require(_is_number(quantile) and 0.0 < quantile < 1.0, "quantile", f"must be in (0, 1), got {quantile!r}")
    require(_is_number(nominal_max) and nominal_max > 0, "nominal_max", f"must be positive, got {nominal_max!r}")
    margins = reachable_margin(model, x, y, steps=steps, lr=lr)
    level = float(torch.quantile(margins.double(), quantile))
    require(level > 0, "x", f"the {quantile:.0%} quantile of the reachable margin is {level:.3g} <= 0")
    return level / float(nominal_max)


__all__ = ["CarliniWagnerL2", "cw_kappa_sweep", "kappa_scale_for", "logit_margin", "reachable_margin"]
