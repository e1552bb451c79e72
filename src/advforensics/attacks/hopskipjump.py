"""HopSkipJumpAttack (Chen, Jordan, Wainwright, S&P 2020), untargeted, L2, via ART's `HopSkipJump`.

Run through the hard-label adapter (`queries.ArtHardLabelAttack`: exact per-example query counts,
one-hot argmax oracle, seeded start and NumPy state, and the final boundary search that brings ART's
output, past the boundary, back to within `boundary_tol` of it); only the argmax label of the model is
ever used.
"""

from __future__ import annotations

from typing import Any

from advforensics.attacks.base import ATTACKS, require
from advforensics.attacks.queries import ArtHardLabelAttack, _is_pos_int


@ATTACKS.register("hopskipjump")
class HopSkipJumpAttack(ArtHardLabelAttack):
    """HopSkipJumpAttack (Chen et al. 2020) via ART, untargeted, L2.

    Arguments (defaults): max_iter (50) iterations; max_eval (10000) and init_eval (100) gradient-
    estimation queries (init_eval * sqrt(t) at iteration t, capped by max_eval); init_size (100);
    seed (0); boundary_search (True): end within boundary_tol (1e-3, L2) of the boundary instead of
    past it (ART's own output; set False to measure it). ART's HSJ has no query budget of its own: the
    iteration budget bounds it at about sum_t min(init_eval sqrt(t), max_eval) + per-iteration
    binary and step searches. Shapes: x (B, C, H, W) in [0, 1], y (B,).
    """

    name = "hopskipjump"

    def __init__(self, max_iter: int = 50, max_eval: int = 10000, init_eval: int = 100, init_size: int = 100,
                 boundary_search: bool = True, boundary_tol: float = 1e-3, seed: int = 0) -> None:
        super().__init__(max_iter=max_iter, max_eval=max_eval, init_eval=init_eval, init_size=init_size,
                         boundary_search=boundary_search, boundary_tol=boundary_tol, seed=seed)

    def _check_params(self) -> None:
        super()._check_params()
        p = self._params
        for key in ("max_iter", "max_eval", "init_eval"):
            require(_is_pos_int(p[key]), key, "must be an integer >= 1")
        require(p["init_eval"] <= p["max_eval"], "init_eval", "must not exceed max_eval")

    def _make_art_attack(self, classifier: Any) -> Any:
        from art.attacks.evasion import HopSkipJump

        p = self._params
        return HopSkipJump(classifier, batch_size=64, targeted=False, norm=2, max_iter=p["max_iter"],
                           max_eval=p["max_eval"], init_eval=p["init_eval"], init_size=p["init_size"],
                           verbose=False)
