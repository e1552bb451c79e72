"""QEBA (Li, Xu, Zhang, Yang, Li; CVPR 2020; arXiv 2005.14137), untargeted, L2, hard-label, hand-written.

No maintained library ships QEBA, so it is written here from the paper. QEBA is HopSkipJumpAttack with
the gradient at the boundary estimated from random directions drawn in a lower-dimensional subspace:
- "spatial" (QEBA-S): Gaussian noise of size (C, H/r, W/r), bilinearly resized to (C, H, W);
- "frequency" (QEBA-F): Gaussian low-frequency DCT coefficients, the top-left (H/r, W/r) block of each
  channel, inverse-DCT'd to (C, H, W).
Per iteration t, at the boundary point x_b (distance d_t from x, input dimension n):
1. n_t = min(init_eval * sqrt(t), max_eval) unit directions u_j in the subspace; probe
   x_b + delta u_j with delta = d_t / n (HSJA's sqrt(n) * theta * d_t, theta = 1 / n^1.5); the sign
   of "still adversarial" (+1/-1, mean-subtracted as HSJA's baseline) weights u_j; their mean is the
   gradient estimate g.
2. Geometric step search: eps = d_t / sqrt(t), halved until x_b + eps g is adversarial.
3. Binary search on [x, x_b + eps g] back to the boundary (bracket theta * d_t).
Start: uniform noise until adversarial (init_size tries), then binary search. End: a final binary
search to within `boundary_tol` (L2) of the boundary, adversarial side, so tracing sees a boundary
point (tracing-lab-notes pitfall 1), and the batch check of `confirm_adversarial`.

All examples of a batch run in lockstep (batched queries); each is charged its own queries and stops
when its `max_queries` would be exceeded, so `queries <= max_queries` per example.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from advforensics.attacks.base import ATTACKS, Attack, Norm, ThreatModel, require
from advforensics.attacks.queries import (
    LabelOracle,
    _is_pos_int,
    boundary_binary_search,
    check_common_params,
    confirm_adversarial,
    idct2,
    random_adversarial_init,
)

_MAX_HALVINGS = 12  # geometric step search length; then the iteration keeps x_b
_FINAL_RESERVE = 24  # queries kept for the final boundary search and batch check
_MAX_ROWS = 16384  # probe rows per model call chunk (memory bound)


def subspace_directions(shape: tuple[int, int, int], count: int, subspace: str, ratio: int,
                        generator: torch.Generator) -> torch.Tensor:
    """`count` random unit-L2 directions (count, C, H, W) in QEBA's low-dimensional subspace."""
    c, h, w = shape
    hs, ws = max(1, math.ceil(h / ratio)), max(1, math.ceil(w / ratio))
    low = torch.randn((count, c, hs, ws), generator=generator)
    if subspace == "spatial":
        full = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False) if ratio > 1 else low
    else:  # "frequency": the low-frequency block of the DCT, zero elsewhere
        coeffs = torch.zeros((count, c, h, w), dtype=torch.float64)
        coeffs[:, :, :hs, :ws] = low.double()
        full = idct2(coeffs).float()
    return full / full.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


@ATTACKS.register("qeba")
class QEBAAttack(Attack):
    """QEBA (HopSkipJump with subspace gradient estimation), untargeted, L2, hard-label.

    Arguments (defaults): max_queries (5000) per example, everything included; max_iter (64);
    init_eval (100) and max_eval (1000) probes per gradient estimate; subspace ("spatial" | "frequency",
    default "spatial"); ratio (2) subspace down-sampling factor per side (the paper used 4 on 224-pixel
    images; 8x8 and 28x28 inputs need less); init_size (100); boundary_tol (1e-3); seed (0).
    Shapes: x (B, C, H, W) in [0, 1], y (B,).
    """

    name = "qeba"
    norm: ClassVar[Norm] = Norm.L2
    threat_model: ClassVar[ThreatModel] = ThreatModel.HARD_LABEL

    def __init__(self, max_queries: int = 5000, max_iter: int = 64, init_eval: int = 100, max_eval: int = 1000,
                 subspace: str = "spatial", ratio: int = 2, init_size: int = 100, boundary_tol: float = 1e-3,
                 seed: int = 0) -> None:
        super().__init__(max_queries=max_queries, max_iter=max_iter, init_eval=init_eval, max_eval=max_eval,
                         subspace=subspace, ratio=ratio, init_size=init_size, boundary_tol=boundary_tol, seed=seed)

    def _check_params(self) -> None:
        check_common_params(self._params)
        p = self._params
        for key in ("max_iter", "init_eval", "max_eval", "ratio"):
            require(_is_pos_int(p[key]), key, "must be an integer >= 1")
        require(p["init_eval"] <= p["max_eval"], "init_eval", "must not exceed max_eval")
        require(p["subspace"] in ("spatial", "frequency"), "subspace", "must be 'spatial' or 'frequency'")
        require(p["max_queries"] >= p["init_size"] + 100, "max_queries", "must be at least init_size + 100")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        p = self._params
        budget = int(p["max_queries"])
        generator = torch.Generator().manual_seed(int(p["seed"]))
        oracle = LabelOracle(model, y)
        b = len(x)
        all_idx = torch.arange(b, device=x.device)
        dim = x[0].numel()
        theta = 1.0 / (dim * math.sqrt(dim))  # HSJA's l2 threshold (gamma = 1)
        search_steps = math.ceil(math.log2(1.0 / theta)) + 1

        already = oracle.is_adversarial(x, all_idx) if b else torch.zeros(0, dtype=torch.bool)
        x_b = x.clone()
        todo = (~already).nonzero().flatten()
        x_init, found = random_adversarial_init(oracle, x[todo], all_idx[todo], generator, int(p["init_size"]))
        todo, x_init = todo[found], x_init[found]
        dist0 = (x_init - x[todo]).flatten(1).norm(dim=1)
        x_b[todo] = boundary_binary_search(oracle, x[todo], x_init, all_idx[todo], theta * dist0, search_steps)
        adversarial = already.clone()
        adversarial[todo] = True
        fallback = x_b.clone()

        active = todo.clone()
        for t in range(1, int(p["max_iter"]) + 1):
            planned = min(int(p["init_eval"] * math.sqrt(t)), int(p["max_eval"]))
            reserve = _MAX_HALVINGS + search_steps + _FINAL_RESERVE
            allowed = (budget - oracle.queries[active.cpu()] - reserve).clamp(max=planned).to(x.device)
            keep = allowed >= min(10, planned)
            active, allowed = active[keep], allowed[keep]
            if len(active) == 0:
                break
            dist = (x_b[active] - x[active]).flatten(1).norm(dim=1)  # (A,)
            grad = self._estimate_gradient(oracle, x_b[active], active, allowed, dist / dim, generator)
            x_b[active] = self._step(oracle, x[active], x_b[active], active, grad, dist / math.sqrt(t),
                                     theta, search_steps)
        fallback[todo] = x_b[todo]
        x_b[todo] = boundary_binary_search(oracle, x[todo], x_b[todo], all_idx[todo], float(p["boundary_tol"]),
                                           max_steps=_FINAL_RESERVE - 5)
        x_b = confirm_adversarial(oracle, x, x_b, adversarial & ~already, fallback, float(p["boundary_tol"]),
                                  rounds=4)
        return x_b, oracle.queries, {"already_adversarial": already.cpu(), "found": adversarial.cpu()}

    def _estimate_gradient(self, oracle: LabelOracle, x_b: torch.Tensor, idx: torch.Tensor,
                           counts: torch.Tensor, delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Sign-weighted mean of subspace probes around boundary points x_b (A, C, H, W) -> (A, C, H, W)."""
        p = self._params
        grads = torch.zeros_like(x_b)
        n_max = int(counts.max())
        per_chunk = max(1, _MAX_ROWS // n_max)
        for start in range(0, len(x_b), per_chunk):
            sl = slice(start, start + per_chunk)
            a = len(x_b[sl])
            u = subspace_directions(tuple(x_b.shape[1:]), a * n_max, p["subspace"], int(p["ratio"]), generator)
            u = u.to(x_b.device, x_b.dtype).view(a, n_max, *x_b.shape[1:])  # (a, n, C, H, W)
            mask = torch.arange(n_max, device=x_b.device).view(1, -1) < counts[sl].view(-1, 1)  # (a, n)
            probes = (x_b[sl].unsqueeze(1) + delta[sl].view(-1, 1, 1, 1, 1) * u).clamp(0, 1)
            u = (probes - x_b[sl].unsqueeze(1)) / delta[sl].view(-1, 1, 1, 1, 1)  # the clipped direction
            rows = mask.nonzero()  # (R, 2)
            adv = oracle.is_adversarial(probes[rows[:, 0], rows[:, 1]], idx[sl][rows[:, 0]])
            phi = torch.zeros(a, n_max, device=x_b.device)
            phi[rows[:, 0], rows[:, 1]] = adv.float() * 2 - 1
            mean = phi.sum(1, keepdim=True) / mask.sum(1, keepdim=True)  # (a, 1)
            mixed = (mean.abs() < 1).view(-1, 1)  # HSJA's baseline only when both signs occur
            phi = torch.where(mixed & mask, phi - mean, phi) * mask
            g = (phi.view(a, n_max, 1, 1, 1) * u).sum(1) / mask.sum(1).view(-1, 1, 1, 1)
            grads[sl] = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return grads

    @staticmethod
    def _step(oracle: LabelOracle, x: torch.Tensor, x_b: torch.Tensor, idx: torch.Tensor, grad: torch.Tensor,
              eps: torch.Tensor, theta: float, search_steps: int) -> torch.Tensor:
        """Geometric step search along grad, then binary search back to the boundary; (A, C, H, W)."""
        eps = eps.clone()
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        moved = x_b.clone()
        for _ in range(_MAX_HALVINGS):
            todo = (~done).nonzero().flatten()
            if len(todo) == 0:
                break
            cand = (x_b[todo] + eps[todo].view(-1, 1, 1, 1) * grad[todo]).clamp(0, 1)
            ok = oracle.is_adversarial(cand, idx[todo])
            moved[todo[ok]] = cand[ok]
            done[todo[ok]] = True
            eps[todo[~ok]] /= 2
        dist = (moved - x).flatten(1).norm(dim=1)
        return boundary_binary_search(oracle, x, moved, idx, theta * dist, search_steps)
