"""SurFree (Maho, Furon, Le Merrer; CVPR 2021; arXiv 2011.12807), untargeted, L2, hard-label, hand-written.

No maintained library ships SurFree, so it is written here from the paper's description. SurFree
estimates no gradient; it tries one random direction at a time and searches on a circle:
- x_b is the current adversarial point on the boundary, d = ||x_b - x||, u = (x_b - x) / d.
- A new direction v: a random image in the low-frequency DCT subspace (coefficients +-1 on the lowest
  `freq_range` fraction of frequencies per side, 0 elsewhere, inverse DCT), orthogonalised (Gram-Schmidt)
  against the last `history` directions tried and then against u, normalised.
- In the plane (u, v), the circle with diameter [x, x_b] holds the points
  z(theta) = x + d cos(theta) (cos(theta) u + sin(theta) v), at distance d cos(theta) from x.
  Sign search: theta = s * theta_max * (T - i) / T for i = 0..T-1 and s = +1, -1, largest |theta|
  first (T = `num_angles`); the first adversarial one wins (one query each). No winner: the
  direction is dropped and theta_max shrinks by `rho`; a winner at the largest angle grows theta_max
  by 1 / rho.
- Binary search on theta between the winner (adversarial) and the next larger angle tried (or
  +-pi/2, where z = x): `bs_steps` queries give the largest adversarial angle; x_b moves there.
Candidates are clipped to [0, 1] before they are queried. The paper's optional final quadratic
interpolation of theta is not implemented (the binary search on theta replaces it). End: a final
binary search on [x, x_b] to within `boundary_tol` (L2) of the boundary, adversarial side, and the
batch check of `confirm_adversarial`.

All examples of a batch run in lockstep (batched queries), each charged its own queries and stopped
before its `max_queries` would be exceeded.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from advforensics.attacks.base import ATTACKS, Attack, Norm, ThreatModel, require
from advforensics.attacks.queries import (
    LabelOracle,
    _is_pos_int,
    _is_pos_number,
    boundary_binary_search,
    check_common_params,
    confirm_adversarial,
    idct2,
    random_adversarial_init,
)

_FINAL_RESERVE = 24  # queries kept for the final boundary search and batch check
_INIT_SEARCH_STEPS = 16  # binary search steps from the noise start to the boundary


def dct_directions(shape: tuple[int, int, int], count: int, freq_range: float,
                   generator: torch.Generator) -> torch.Tensor:
    """`count` random images (count, C, H, W): +-1 DCT coefficients on the low frequencies, inverse DCT."""
    c, h, w = shape
    hs, ws = max(1, round(h * freq_range)), max(1, round(w * freq_range))
    coeffs = torch.zeros((count, c, h, w), dtype=torch.float64)
    signs = torch.randint(0, 2, (count, c, hs, ws), generator=generator).double() * 2 - 1
    coeffs[:, :, :hs, :ws] = signs
    return idct2(coeffs).float()


def _orthonormalise(t: torch.Tensor, basis: torch.Tensor, mask: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt of t (A, D) against basis (A, L, D) rows where mask (A, L), then against u (A, D)."""
    for _ in range(2):  # twice: the history need not be orthogonal to the current u
        coef = torch.einsum("ald,ad->al", basis, t) * mask
        t = t - torch.einsum("al,ald->ad", coef, basis)
        t = t - (t * u).sum(1, keepdim=True) * u
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _circle_point(x: torch.Tensor, d: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                  theta: torch.Tensor) -> torch.Tensor:
    """z(theta) = x + d cos(theta) (cos(theta) u + sin(theta) v), clipped to [0, 1]; flat (A, D)."""
    c, s = torch.cos(theta).view(-1, 1), torch.sin(theta).view(-1, 1)
    return (x + d.view(-1, 1) * c * (c * u + s * v)).clamp(0, 1)


@ATTACKS.register("surfree")
class SurFreeAttack(Attack):
    """SurFree (geometric, surrogate-free), untargeted, L2, hard-label.

    Arguments (defaults): max_queries (5000) per example, everything included; max_iter (1000) directions
    tried; num_angles (3) angles per side in the sign search; theta_max (30.0) initial largest angle in
    degrees; rho (0.98) theta_max adaptation; bs_steps (10) binary-search steps on the angle;
    freq_range (0.5) low-frequency fraction of the DCT per side; history (10) past directions to stay
    orthogonal to; init_size (100); boundary_tol (1e-3); seed (0).
    Shapes: x (B, C, H, W) in [0, 1], y (B,).
    """

    name = "surfree"
    norm: ClassVar[Norm] = Norm.L2
    threat_model: ClassVar[ThreatModel] = ThreatModel.HARD_LABEL

    def __init__(self, max_queries: int = 5000, max_iter: int = 1000, num_angles: int = 3, theta_max: float = 30.0,
                 rho: float = 0.98, bs_steps: int = 10, freq_range: float = 0.5, history: int = 10,
                 init_size: int = 100, boundary_tol: float = 1e-3, seed: int = 0) -> None:
        super().__init__(max_queries=max_queries, max_iter=max_iter, num_angles=num_angles, theta_max=theta_max,
                         rho=rho, bs_steps=bs_steps, freq_range=freq_range, history=history, init_size=init_size,
                         boundary_tol=boundary_tol, seed=seed)

    def _check_params(self) -> None:
        check_common_params(self._params)
        p = self._params
        for key in ("max_iter", "num_angles", "bs_steps", "history"):
            require(_is_pos_int(p[key]), key, "must be an integer >= 1")
        require(_is_pos_number(p["theta_max"]) and p["theta_max"] < 90, "theta_max", "must be in (0, 90) degrees")
        require(_is_pos_number(p["rho"]) and p["rho"] < 1, "rho", "must be in (0, 1)")
        require(_is_pos_number(p["freq_range"]) and p["freq_range"] <= 1, "freq_range", "must be in (0, 1]")
        require(p["max_queries"] >= p["init_size"] + 100, "max_queries", "must be at least init_size + 100")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        p = self._params
        budget, n_angles, bs_steps = int(p["max_queries"]), int(p["num_angles"]), int(p["bs_steps"])
        generator = torch.Generator().manual_seed(int(p["seed"]))
        oracle = LabelOracle(model, y)
        b = len(x)
        shape = tuple(x.shape[1:])
        all_idx = torch.arange(b, device=x.device)

        already = oracle.is_adversarial(x, all_idx) if b else torch.zeros(0, dtype=torch.bool)
        x_b = x.clone()
        todo = (~already).nonzero().flatten()
        x_init, found = random_adversarial_init(oracle, x[todo], all_idx[todo], generator, int(p["init_size"]))
        todo, x_init = todo[found], x_init[found]
        x_b[todo] = boundary_binary_search(oracle, x[todo], x_init, all_idx[todo], 0.0, _INIT_SEARCH_STEPS)
        adversarial = already.clone()
        adversarial[todo] = True

        n = len(todo)
        x0 = x[todo].flatten(1)  # (N, D)
        xb = x_b[todo].flatten(1)  # (N, D)
        idx = all_idx[todo]
        hist = torch.zeros(n, int(p["history"]), x0.shape[1], device=x.device)  # (N, L, D)
        hist_mask = torch.zeros(n, int(p["history"]), device=x.device)
        theta_max = torch.full((n,), math.radians(float(p["theta_max"])), device=x.device)
        step_cost = 2 * n_angles + bs_steps
        for k in range(int(p["max_iter"])):
            live = ((budget - oracle.queries[idx.cpu()]) >= step_cost + _FINAL_RESERVE).to(x.device)
            act = live.nonzero().flatten()
            if len(act) == 0:
                break
            diff = xb[act] - x0[act]
            d = diff.norm(dim=1)
            u = diff / d.clamp_min(1e-12).view(-1, 1)
            t = dct_directions(shape, len(act), float(p["freq_range"]), generator).to(x.device).flatten(1)
            v = _orthonormalise(t, hist[act], hist_mask[act], u)
            slot = k % int(p["history"])
            hist[act, slot] = v
            hist_mask[act, slot] = 1.0
            self._circular_step(oracle, x0, xb, idx, act, d, u, v, theta_max, n_angles, bs_steps, float(p["rho"]),
                                shape)

        fallback = x_b.clone()
        fallback[todo] = xb.view(-1, *shape)
        x_b[todo] = boundary_binary_search(oracle, x[todo], fallback[todo], idx, float(p["boundary_tol"]),
                                           max_steps=_FINAL_RESERVE - 5)
        x_b = confirm_adversarial(oracle, x, x_b, adversarial & ~already, fallback, float(p["boundary_tol"]),
                                  rounds=4)
        return x_b, oracle.queries, {"already_adversarial": already.cpu(), "found": adversarial.cpu()}

    @staticmethod
    def _circular_step(oracle: LabelOracle, x0: torch.Tensor, xb: torch.Tensor, idx: torch.Tensor,
                       act: torch.Tensor, d: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                       theta_max: torch.Tensor, n_angles: int, bs_steps: int, rho: float,
                       shape: tuple[int, ...]) -> None:
        """Sign search then angle binary search for examples `act`; updates xb and theta_max in place."""
        a = len(act)
        tmax = theta_max[act]
        win = torch.zeros(a, device=x0.device)  # winning angle (0 = none)
        limit = torch.zeros(a, device=x0.device)  # the next larger angle, known not adversarial (or +-pi/2)
        won_at = torch.full((a,), -1, dtype=torch.int64, device=x0.device)
        for i in range(n_angles):
            for sign in (1.0, -1.0):
                todo = (won_at < 0).nonzero().flatten()
                if len(todo) == 0:
                    break
                theta = sign * tmax[todo] * (n_angles - i) / n_angles
                z = _circle_point(x0[act[todo]], d[todo], u[todo], v[todo], theta)
                ok = oracle.is_adversarial(z.view(len(todo), *shape), idx[act[todo]])
                hit = todo[ok]
                win[hit] = theta[ok]
                won_at[hit] = i
                outer = sign * tmax[hit] * (n_angles - i + 1) / n_angles
                limit[hit] = torch.full_like(outer, sign * math.pi / 2) if i == 0 else outer
        found = won_at >= 0
        theta_max[act[~found]] *= rho
        theta_max[act[won_at == 0]] = (theta_max[act[won_at == 0]] / rho).clamp(max=math.pi / 2 * 0.99)
        sel = found.nonzero().flatten()
        if len(sel) == 0:
            return
        lo, hi = win[sel], limit[sel]  # lo adversarial, hi not (|hi| > |lo|)
        for _ in range(bs_steps):
            mid = (lo + hi) / 2
            z = _circle_point(x0[act[sel]], d[sel], u[sel], v[sel], mid)
            ok = oracle.is_adversarial(z.view(len(sel), *shape), idx[act[sel]])
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
        xb[act[sel]] = _circle_point(x0[act[sel]], d[sel], u[sel], v[sel], lo)
