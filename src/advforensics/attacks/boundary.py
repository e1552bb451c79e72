"""Boundary Attack (Brendel, Rauber, Bethge, ICLR 2018), untargeted, L2, via ART's `BoundaryAttack`.

Run through the hard-label adapter (`queries.ArtHardLabelAttack`: exact per-example query counts,
one-hot argmax oracle, seeded start and NumPy state, optional final boundary search); only the argmax
label of the model is ever used.
"""

from __future__ import annotations

from typing import Any

from advforensics.attacks.base import ATTACKS, require
from advforensics.attacks.queries import ArtHardLabelAttack, _is_pos_int, _is_pos_number


@ATTACKS.register("boundary")
class BoundaryAttack(ArtHardLabelAttack):
    """Boundary Attack (Brendel et al. 2018) via ART, untargeted, L2.

    Arguments (defaults): max_iter (1000) ART iterations; delta (0.01) orthogonal step; epsilon (0.01)
    step towards the clean image; step_adapt (0.667); num_trial (25) and sample_size (20) trials per
    iteration; seed (0); init_size (100) uniform-noise tries for the start; boundary_search (True)
    with boundary_tol (1e-3). Queries per example are bounded by
    1 + init_size + max_iter * num_trial * sample_size (+ about 12 for the search); ART's default
    max_iter is 5000, lowered here so a default run on a CPU is minutes, not hours.
    Shapes: x (B, C, H, W) in [0, 1], y (B,).
    """

    name = "boundary"

    def __init__(self, max_iter: int = 1000, delta: float = 0.01, epsilon: float = 0.01,
                 step_adapt: float = 0.667, num_trial: int = 25, sample_size: int = 20,
                 init_size: int = 100, boundary_search: bool = True, boundary_tol: float = 1e-3,
                 seed: int = 0) -> None:
        super().__init__(max_iter=max_iter, delta=delta, epsilon=epsilon, step_adapt=step_adapt,
                         num_trial=num_trial, sample_size=sample_size, init_size=init_size,
                         boundary_search=boundary_search, boundary_tol=boundary_tol, seed=seed)

    def _check_params(self) -> None:
        super()._check_params()
        p = self._params
        for key in ("max_iter", "num_trial", "sample_size"):
            require(_is_pos_int(p[key]), key, "must be an integer >= 1")
        for key in ("delta", "epsilon"):
            require(_is_pos_number(p[key]), key, "must be a number > 0")
        require(_is_pos_number(p["step_adapt"]) and p["step_adapt"] < 1, "step_adapt", "must be in (0, 1)")

    def _make_art_attack(self, classifier: Any) -> Any:
        from art.attacks.evasion import BoundaryAttack as ArtBoundary

        p = self._params
        return ArtBoundary(classifier, batch_size=64, targeted=False, delta=p["delta"], epsilon=p["epsilon"],
                           step_adapt=p["step_adapt"], max_iter=p["max_iter"], num_trial=p["num_trial"],
                           sample_size=p["sample_size"], init_size=p["init_size"], verbose=False)
