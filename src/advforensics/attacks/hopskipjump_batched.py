"""HopSkipJumpAttack run on a whole batch at once: ART's algorithm, step for step, in lockstep.

Why it exists: ART attacks one image at a time, so each of its ~6,400 queries per MNIST example is a
model call on at most 64 rows, plus NumPy round trips; the studies spend most of their time there.
Here every example of the batch takes the same steps together, and each step asks the model about all
of them in one call.

What is kept from ART's `HopSkipJump` (untargeted, L2) and from the ART adapter
(`queries.ArtHardLabelAttack`), so that the two are interchangeable:
- the start: the adapter's seeded uniform-noise search (same generator per example, same draws);
- per iteration t = 0, 1, ...: delta = 0.1 at t = 0, else sqrt(d) theta dist with theta = 0.01 / sqrt(d);
  a binary search to the boundary with blend tolerance theta; min(init_eval sqrt(t + 1), max_eval)
  unit Gaussian probes, clipped, signed (+1 adversarial) with ART's baseline rule; a geometric step
  search from 2 dist / sqrt(t + 1), halving until adversarial;
- the random probes: each example draws from its own NumPy RandomState seeded as the adapter seeds
  NumPy for that example, in the same order, so example i's stream does not depend on the batch;
- the end: ART's output is past the boundary; the adapter's final binary search to within
  `boundary_tol` (L2) and the full-batch `confirm_adversarial` check.
Queries are counted per example by the `LabelOracle`; ART's own four bookkeeping predictions (the clean
and start labels when it begins, the clean and final labels of its success log) are not made, so the
counts are ART's less 4.
tests/attacks/test_hopskipjump_batched.py checks it against ART on the same inputs.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from advforensics.attacks.base import ATTACKS, Attack, Norm, ThreatModel, require
from advforensics.attacks.queries import (
    LabelOracle,
    _is_pos_int,
    boundary_binary_search,
    check_common_params,
    confirm_adversarial,
    random_adversarial_init,
)

_MAX_ROWS = 16384  # probe rows per chunk of examples (memory bound: rows x pixels floats)
_MAX_HALVINGS = 40  # ART halves without limit; past 2^-40 of the distance the step is below float noise


def _example_seed(seed: int, i: int) -> int:
    """The adapter's per-example seed (queries.ArtHardLabelAttack), so both start from the same point."""
    return seed * 1_000_003 + i


@ATTACKS.register("hopskipjump-batched")
class BatchedHopSkipJumpAttack(Attack):
    """HopSkipJumpAttack (Chen et al. 2020), untargeted, L2: ART's algorithm on the whole batch at once.

    Arguments and defaults as `hopskipjump` (the ART adapter): max_iter (50); max_eval (10000) and
    init_eval (100) probes per gradient estimate; init_size (100); boundary_search (True) and
    boundary_tol (1e-3); seed (0). Shapes: x (B, C, H, W) in [0, 1], y (B,).
    """

    name = "hopskipjump-batched"
    norm: ClassVar[Norm] = Norm.L2
    threat_model: ClassVar[ThreatModel] = ThreatModel.HARD_LABEL

    def __init__(self, max_iter: int = 50, max_eval: int = 10000, init_eval: int = 100, init_size: int = 100,
                 boundary_search: bool = True, boundary_tol: float = 1e-3, seed: int = 0) -> None:
        super().__init__(max_iter=max_iter, max_eval=max_eval, init_eval=init_eval, init_size=init_size,
                         boundary_search=boundary_search, boundary_tol=boundary_tol, seed=seed)

    def _check_params(self) -> None:
        check_common_params(self._params)
        p = self._params
        for key in ("max_iter", "max_eval", "init_eval"):
            require(_is_pos_int(p[key]), key, "must be an integer >= 1")
        require(isinstance(p["boundary_search"], bool), "boundary_search", "must be True or False")

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        p = self._params
        seed = int(p["seed"])
        oracle = LabelOracle(model, y)
        all_idx = torch.arange(len(x), device=x.device)
        already = oracle.is_adversarial(x, all_idx) if len(x) else torch.zeros(0, dtype=torch.bool)
        x_adv = x.clone()
        found = already.clone()
        for i in (~already).nonzero().flatten().tolist():  # the adapter's start, example by example
            generator = torch.Generator().manual_seed(_example_seed(seed, i))
            start, ok = random_adversarial_init(oracle, x[i:i + 1], all_idx[i:i + 1], generator,
                                                int(p["init_size"]))
            x_adv[i:i + 1], found[i] = start, bool(ok[0])
        todo = (found & ~already).nonzero().flatten()
        rngs = {int(i): np.random.RandomState(_example_seed(seed, int(i)) % 2**32) for i in todo}
        x_adv[todo] = self._iterate(oracle, x[todo], x_adv[todo], todo, rngs)
        adversarial = already.clone()
        adversarial[todo] = oracle.is_adversarial(x_adv[todo], todo)  # did the iterations end adversarial?
        todo = (adversarial & ~already).nonzero().flatten()
        fallback = x_adv.clone()
        if p["boundary_search"] and len(todo):
            x_adv[todo] = boundary_binary_search(oracle, x[todo], x_adv[todo], todo, float(p["boundary_tol"]))
        x_adv[found & ~adversarial] = x[found & ~adversarial]
        x_adv = confirm_adversarial(oracle, x, x_adv, adversarial & ~already, fallback, float(p["boundary_tol"]))
        return x_adv, oracle.queries, {"already_adversarial": already.cpu(), "found": adversarial.cpu()}

    def _iterate(self, oracle: LabelOracle, x: torch.Tensor, current: torch.Tensor, idx: torch.Tensor,
                 rngs: dict[int, np.random.RandomState]) -> torch.Tensor:
        """ART's `_attack` loop for every example of idx at once; x, current (A, C, H, W)."""
        p = self._params
        if len(x) == 0:
            return current
        dim = x[0].numel()
        theta = 0.01 / math.sqrt(dim)
        current = current.clone()
        for t in range(int(p["max_iter"])):
            dist = _l2(current - x)
            delta = torch.full_like(dist, 0.1) if t == 0 else math.sqrt(dim) * theta * dist
            current = boundary_binary_search(oracle, x, current, idx, theta * dist)
            num_eval = min(int(p["init_eval"] * math.sqrt(t + 1)), int(p["max_eval"]))
            update = self._gradient_direction(oracle, current, idx, num_eval, delta, rngs)
            current = self._step(oracle, x, current, idx, update, 2.0 * _l2(current - x) / math.sqrt(t + 1))
        return current

    @staticmethod
    def _gradient_direction(oracle: LabelOracle, current: torch.Tensor, idx: torch.Tensor, num_eval: int,
                            delta: torch.Tensor, rngs: dict[int, np.random.RandomState]) -> torch.Tensor:
        """ART's `_compute_update` for each row: the unit sign-weighted mean of num_eval clipped probes."""
        shape = tuple(current.shape[1:])
        update = torch.empty_like(current)
        per_chunk = max(1, _MAX_ROWS // num_eval)
        for start in range(0, len(current), per_chunk):
            rows = slice(start, start + per_chunk)
            cur, d = current[rows], delta[rows].view(-1, 1, *[1] * len(shape))
            noise = torch.from_numpy(np.stack([rngs[int(i)].randn(num_eval, *shape).astype(np.float32)
                                               for i in idx[rows]])).to(cur.device, cur.dtype)  # (a, n, ...)
            noise = noise / noise.flatten(2).norm(dim=2).view(*noise.shape[:2], *[1] * len(shape))
            probes = (cur.unsqueeze(1) + d * noise).clamp(0, 1)
            noise = (probes - cur.unsqueeze(1)) / d  # the clipped direction, as ART
            a = len(cur)
            owner = idx[rows].repeat_interleave(num_eval)
            sign = oracle.is_adversarial(probes.flatten(0, 1), owner).view(a, num_eval).to(cur.dtype) * 2 - 1
            mean = sign.mean(dim=1, keepdim=True)
            one_sided = mean.abs() == 1  # all +1 or all -1: ART averages the probes, signed, unweighted
            weights = torch.where(one_sided, mean.expand_as(sign), sign - mean)
            grad = (weights.view(a, num_eval, *[1] * len(shape)) * noise).mean(dim=1)
            update[rows] = grad / _l2(grad).clamp_min(1e-12).view(-1, *[1] * len(shape))
        return update

    @staticmethod
    def _step(oracle: LabelOracle, x: torch.Tensor, current: torch.Tensor, idx: torch.Tensor,
              update: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
        """ART's geometric step search: halve epsilon until current + epsilon update is adversarial."""
        epsilon = epsilon.clone()
        moved = current.clone()
        todo = torch.arange(len(current), device=current.device)
        for _ in range(_MAX_HALVINGS):
            if len(todo) == 0:
                break
            epsilon[todo] /= 2
            candidate = (current[todo] + epsilon[todo].view(-1, *[1] * (current.dim() - 1)) * update[todo])
            ok = oracle.is_adversarial(candidate.clamp(0, 1), idx[todo])
            moved[todo[ok]] = candidate[ok].clamp(0, 1)
            todo = todo[~ok]
        return moved  # rows still in todo keep their boundary point (adversarial side)


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)

