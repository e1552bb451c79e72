"""The query toolkit every hard-label (decision-based) attack shares, and the adapter that runs ART's.

Toolkit: `LabelOracle` (the argmax label only, with an exact per-example query count),
`random_adversarial_init`, `boundary_binary_search`, `confirm_adversarial`, `check_common_params` (and
the `_is_pos_int` / `_is_pos_number` checks), and the DCT helpers `dct_matrix`, `dct2`, `idct2`. It is
used by every hard-label attack: boundary.py, hopskipjump.py and signopt.py through the ART adapter
below, the hand-written qeba.py and surfree.py directly.

ART adapter: `ArtHardLabelAttack`, the base class of the attacks that run ART's decision-based
attacks ("boundary", "hopskipjump", "signopt"; untargeted, L2, only the argmax label of the model is
ever used).

Why an adapter rather than hand-written attacks: ART is the maintained reference the tracing paper used.
The adapter adds what ART lacks for forensic work:
- an exact per-example query count (every model evaluation of that example, including the clean
  check, the initial random search and the final boundary search);
- a hard-label oracle: ART only ever sees a one-hot argmax, so no score can leak into the attack;
- determinism: ART draws its initial point from an unseeded `np.random.RandomState()`, so the adapter
  finds the initial adversarial point itself (seeded uniform noise, counted) and passes it as
  `x_adv_init`; ART's other draws use NumPy's global generator, seeded per example from `seed` and
  restored afterwards;
- `boundary_search`: ART's HopSkipJump returns the point after its last step, past the boundary
  (tracing-lab-notes pitfall 1). A final binary search on the segment [x, x_adv] (hard-label queries,
  counted) moves the example back to within `boundary_tol` (L2) of the boundary, on its adversarial
  side, as foolbox's implementation ends;
- already-misclassified inputs are returned unchanged (1 query, the clean check) with success flagged.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from advforensics.attacks.base import Attack, Norm, ThreatModel, batched_predict, require

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Query toolkit shared by the hard-label attacks
# ----------------------------------------------------------------------------------------------------


class LabelOracle:
    """Answers "is this input adversarial for example i?" from the argmax label only, and counts.

    `queries[i]` is the number of model evaluations spent on example i: one per input row asked.
    """

    def __init__(self, model: nn.Module, y: torch.Tensor, batch_size: int = 512) -> None:
        self.model = model
        self.y = y  # (B,)
        self.batch_size = batch_size
        self.queries = torch.zeros(len(y), dtype=torch.int64)  # (B,)

    def labels(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """argmax labels of x (N, C, H, W), charging one query to example idx[n] for row n."""
        self.queries.index_add_(0, idx.cpu(), torch.ones(len(idx), dtype=torch.int64))
        return batched_predict(self.model, x.float(), self.batch_size).to(self.y.device)

    def is_adversarial(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(N,) bool: label of x[n] differs from y[idx[n]] (untargeted success)."""
        return self.labels(x, idx) != self.y[idx]


def random_adversarial_init(oracle: LabelOracle, x: torch.Tensor, idx: torch.Tensor,
                            generator: torch.Generator, init_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform-noise images until one is adversarial (HSJA/Boundary's start), one query per try.

    x: (N, C, H, W) clean images of examples idx (N,). Returns (x_init (N, C, H, W), found (N,) bool);
    where nothing was found within `init_size` tries x_init is x.
    """
    x_init = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(init_size):
        todo = (~found).nonzero().flatten()
        if len(todo) == 0:
            break
        noise = torch.rand(x[todo].shape, generator=generator).to(x.device, x.dtype)
        hit = oracle.is_adversarial(noise, idx[todo])
        x_init[todo[hit]] = noise[hit]
        found[todo[hit]] = True
    return x_init, found


def boundary_binary_search(oracle: LabelOracle, x: torch.Tensor, x_adv: torch.Tensor, idx: torch.Tensor,
                           tol: float | torch.Tensor, max_steps: int = 64) -> torch.Tensor:
    """Binary search on each segment [x, x_adv] for the point nearest x that is still adversarial.

    x, x_adv: (N, C, H, W), every x_adv[n] adversarial for example idx[n]. Stops per example once the
    bracket is at most `tol` long in L2 (so the result lies within `tol` of the boundary crossing,
    on the adversarial side), or after `max_steps`; one query per step per unconverged example.
    `tol` is a float or a per-example (N,) tensor. Returns (N, C, H, W).
    """
    dist = (x_adv - x).flatten(1).norm(dim=1)  # (N,)
    lo = torch.zeros_like(dist)  # blend factor known non-adversarial (0 = clean)
    hi = torch.ones_like(dist)  # blend factor known adversarial
    for _ in range(max_steps):
        active = ((hi - lo) * dist > tol).nonzero().flatten()  # tol: float or (N,)
        if len(active) == 0:
            break
        mid = (lo[active] + hi[active]) / 2
        blend = _blend(x[active], x_adv[active], mid)
        adv = oracle.is_adversarial(blend, idx[active])
        hi[active[adv]] = mid[adv]
        lo[active[~adv]] = mid[~adv]
    return _blend(x, x_adv, hi)


def confirm_adversarial(oracle: LabelOracle, x: torch.Tensor, x_adv: torch.Tensor, ok: torch.Tensor,
                        fallback: torch.Tensor, tol: float, rounds: int = 4) -> torch.Tensor:
    """Re-check boundary points in one full batch, nudging any that flipped back outward by `tol`.

    A point within `tol` of the boundary can change label with the batch it is evaluated in (the
    convolution kernels' float rounding depends on the batch size), so the final points are checked
    exactly as the attack contract evaluates them: all B rows in one batch. Rows that are not
    adversarial there move outward along the ray from x through `fallback` (the pre-search point) by
    tol, 2 tol, 4 tol, ... (past `fallback` where needed: an attack's own output may sit as close to
    the boundary); after `rounds` tries they take `fallback`. One query per example per round.
    x, x_adv, fallback: (B, C, H, W); ok: (B,) bool, the rows that should be adversarial.
    """
    x_adv = x_adv.clone()
    all_idx = torch.arange(len(x), device=x.device)
    for round_ in range(rounds + 1):
        if not ok.any():
            break
        # All rows in one batch, as the contract evaluates them; only the rows checked are charged.
        oracle.queries.index_add_(0, all_idx[ok].cpu(), torch.ones(int(ok.sum()), dtype=torch.int64))
        predicted = batched_predict(oracle.model, x_adv.float(), oracle.batch_size).to(oracle.y.device)
        bad = ok & (predicted == oracle.y)
        if not bad.any():
            break
        if round_ == rounds:
            x_adv[bad] = fallback[bad]
            break
        delta = (x_adv[bad] - x[bad])
        full = (fallback[bad] - x[bad]).flatten(1).norm(dim=1).clamp_min(1e-12)
        t = (delta.flatten(1).norm(dim=1) + tol * 2 ** round_) / full  # may pass fallback, outward
        x_adv[bad] = _blend(x[bad], fallback[bad], t).clamp(0, 1)
    return x_adv


def _blend(x: torch.Tensor, x_adv: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x + t (x_adv - x) per example; t (N,)."""
    return x + t.view(-1, *([1] * (x.dim() - 1))) * (x_adv - x)


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n, n): D @ v equals scipy.fft.dct(v, norm="ortho")."""
    k = torch.arange(n, dtype=dtype, device=device).view(-1, 1)
    i = torch.arange(n, dtype=dtype, device=device).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II over the last two dimensions of x (..., H, W)."""
    dh = dct_matrix(x.shape[-2], x.dtype, x.device)
    dw = dct_matrix(x.shape[-1], x.dtype, x.device)
    return dh @ x @ dw.T


def idct2(c: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct2` (orthonormal, so the transpose)."""
    dh = dct_matrix(c.shape[-2], c.dtype, c.device)
    dw = dct_matrix(c.shape[-1], c.dtype, c.device)
    return dh.T @ c @ dw


def check_common_params(params: dict[str, Any]) -> None:
    """Checks shared by the hard-label attacks: seed, boundary_tol, init_size, max_queries."""
    if "seed" in params:
        require(isinstance(params["seed"], int) and params["seed"] >= 0, "seed", "must be an integer >= 0")
    if "boundary_tol" in params:
        tol = params["boundary_tol"]
        require(isinstance(tol, (int, float)) and tol > 0, "boundary_tol", "must be a number > 0")
    if "init_size" in params:
        require(_is_pos_int(params["init_size"]), "init_size", "must be an integer >= 1")
    if "max_queries" in params:
        require(_is_pos_int(params["max_queries"]), "max_queries", "must be an integer >= 1")


def _is_pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_pos_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# ----------------------------------------------------------------------------------------------------
# ART adapter
# ----------------------------------------------------------------------------------------------------


class _OneHotArgmax(nn.Module):
    """What ART sees: the one-hot argmax of the model (float32 input cast, DESIGN.md quirk).

    Counts rows so that the adapter can charge every ART evaluation to the example being attacked.
    """

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        labels = self.model(x.float()).argmax(dim=1)
        return nn.functional.one_hot(labels, self.num_classes).float()


class ArtHardLabelAttack(Attack):
    """Runs an ART evasion attack one example at a time behind the hard-label oracle (see module doc).

    Subclasses define `_make_art_attack(classifier)` and `_uses_init` (whether ART takes x_adv_init).
    Common parameters: seed (0), boundary_search, boundary_tol (1e-3), init_size (100).
    """

    norm: ClassVar[Norm] = Norm.L2
    threat_model: ClassVar[ThreatModel] = ThreatModel.HARD_LABEL
    _uses_init: ClassVar[bool] = True

    def _check_params(self) -> None:
        check_common_params(self._params)
        require(isinstance(self._params.get("boundary_search"), bool), "boundary_search", "must be True or False")

    def _make_art_attack(self, classifier: Any) -> Any:
        raise NotImplementedError

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        from art.estimators.classification import PyTorchClassifier

        device = x.device
        seed = int(self._params["seed"])
        oracle = LabelOracle(model, y)
        all_idx = torch.arange(len(x), device=device)
        with torch.no_grad():  # the number of classes (known to any user of the API), not a label query
            num_classes = int(model(x[:1].float()).shape[1]) if len(x) else 0
        if len(x):
            # The clean check: one query per example; misclassified inputs are returned unchanged.
            already = oracle.is_adversarial(x, all_idx)
        else:
            already = torch.zeros(0, dtype=torch.bool)
        wrapper = _OneHotArgmax(model, num_classes)
        device_type = "gpu" if device.type == "cuda" else "cpu"
        classifier = PyTorchClassifier(model=wrapper, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                       nb_classes=num_classes, clip_values=(0.0, 1.0), device_type=device_type)
        art_attack = self._make_art_attack(classifier)
        x_adv = x.clone()
        fallback = x.clone()  # ART's own output, where the final check needs to step back
        ended_adv = already.clone()
        todo = (~already).nonzero().flatten().tolist()
        for i in tqdm(todo, desc=self.name, disable=len(todo) < 20, leave=False):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
            idx = all_idx[i:i + 1]
            kwargs: dict[str, Any] = {}
            if self._uses_init:
                x_init, found = random_adversarial_init(oracle, x[i:i + 1], idx, generator,
                                                        int(self._params["init_size"]))
                if not bool(found[0]):
                    logger.info("%s: no adversarial start for example %d in %d tries", self.name, i,
                                self._params["init_size"])
                    continue
                kwargs["x_adv_init"] = x_init.cpu().numpy().astype(np.float32)
            wrapper.rows = 0
            state = np.random.get_state()
            np.random.seed((seed * 1_000_003 + i) % 2**32)
            try:
                out = art_attack.generate(x[i:i + 1].cpu().numpy().astype(np.float32),
                                          y=np.array([int(y[i])]), **kwargs)
            finally:
                np.random.set_state(state)
            oracle.queries[i] += wrapper.rows
            candidate = torch.from_numpy(out).to(device, x.dtype).clamp(0, 1)
            is_adv = bool(oracle.is_adversarial(candidate, idx)[0])  # one query: did ART succeed?
            if not is_adv:
                continue
            fallback[i:i + 1] = candidate
            if self._params["boundary_search"]:
                candidate = boundary_binary_search(oracle, x[i:i + 1], candidate, idx,
                                                   float(self._params["boundary_tol"]))
            x_adv[i:i + 1] = candidate
            ended_adv[i] = True
        x_adv = confirm_adversarial(oracle, x, x_adv, ended_adv & ~already, fallback,
                                    float(self._params["boundary_tol"]))
        return x_adv, oracle.queries, {"already_adversarial": already.cpu(), "found": ended_adv.cpu()}
