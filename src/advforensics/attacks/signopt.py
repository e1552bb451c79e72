"""Sign-OPT (Cheng, Singh, Chen, Chen, Liu, Hsieh; ICLR 2020), untargeted, L2, via ART's SignOPTAttack.

Sign-OPT searches over directions theta: g(theta) is the distance to the boundary along theta (found by
binary search); the sign of g's directional derivative costs one hard-label query per random direction,
and k such signs give a descent direction. ART's implementation works untargeted here and honours a
per-example query limit, so it is used through the hard-label adapter (`queries.ArtHardLabelAttack`:
exact per-example query counts, one-hot argmax oracle, seeded NumPy state, optional final boundary
search). ART draws its initial directions itself (seeded through NumPy's global generator).
"""

from __future__ import annotations

from typing import Any, ClassVar

from advforensics.attacks.base import ATTACKS, require
from advforensics.attacks.queries import ArtHardLabelAttack, _is_pos_int, _is_pos_number


@ATTACKS.register("signopt")
class SignOPTAttack(ArtHardLabelAttack):
    """Sign-OPT via ART, untargeted, L2.

    Arguments (defaults): max_queries (4000) ART's per-example `query_limit`. ART checks it once per
    iteration and leaves its start-up search out of its own count, so the true count reported in
    `queries` can exceed it (measured: max 3286 at 3000 on MNIST, 348 at 200 on 8x8 digits);
    max_iter (1000); k (200) random directions per sign-gradient estimate; num_trial (100)
    random starting directions; alpha (0.2) line-search step; beta (0.001) line-search tolerance;
    epsilon (0.001) smoothing; seed (0); boundary_search (True) with boundary_tol (1e-3).
    Shapes: x (B, C, H, W) in [0, 1], y (B,).
    """

    name = "signopt"
    _uses_init: ClassVar[bool] = False  # ART's untargeted Sign-OPT finds its own start

    def __init__(self, max_queries: int = 4000, max_iter: int = 1000, k: int = 200, num_trial: int = 100,
                 alpha: float = 0.2, beta: float = 0.001, epsilon: float = 0.001,
                 boundary_search: bool = True, boundary_tol: float = 1e-3, seed: int = 0) -> None:
        super().__init__(max_queries=max_queries, max_iter=max_iter, k=k, num_trial=num_trial, alpha=alpha,
                         beta=beta, epsilon=epsilon, boundary_search=boundary_search,
                         boundary_tol=boundary_tol, seed=seed)

    def _check_params(self) -> None:
        super()._check_params()
        p = self._params
        for key in ("max_iter", "k", "num_trial"):
            require(_is_pos_int(p[key]), key, "must be an integer >= 1")
        for key in ("alpha", "beta", "epsilon"):
            require(_is_pos_number(p[key]), key, "must be a number > 0")

    def _make_art_attack(self, classifier: Any) -> Any:
        from art.attacks.evasion import SignOPTAttack as ArtSignOPT

        p = self._params
        return ArtSignOPT(classifier, targeted=False, epsilon=p["epsilon"], num_trial=p["num_trial"],
                          max_iter=p["max_iter"], query_limit=p["max_queries"], k=p["k"], alpha=p["alpha"],
                          beta=p["beta"], batch_size=64, verbose=False)
