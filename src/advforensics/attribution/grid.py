"""The attack grid of an attribution corpus: attacks x hyperparameter values x victims (MTAA Table 1).

The grid is data, not code: a `GridSpec` round-trips through JSON (it is stored in the corpus
manifest), so a corpus always says exactly which attacks, budgets and fixed parameters made it.
Hyperparameters are stored in the paper's units: epsilon * 255 for FGSM/PGD, kappa for C&W, so one
regressor sees one scale (RMSE is reported in those units).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from advforensics.errors import InputValidationError, UnknownNameError

#: Label used for the optional false-alarm class (clean images): attack and victim are both "clean".
CLEAN = "clean"

#: Attacks the corpus generator knows how to run, and the unit of their hyperparameter.
KNOWN_ATTACKS = {"fgsm": "eps255", "pgd-linf": "eps255", "cw-l2": "kappa"}


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the grid: its registry name, hyperparameter values and fixed parameters.

    values: eps * 255 for "fgsm"/"pgd-linf" (10 means eps = 10/255); kappa for "cw-l2".
    params: fixed keyword arguments for `create_attack` (e.g. PGD steps). For PGD, `alpha_ratio`
        (step size as a fraction of eps) replaces alpha, since alpha must scale with eps.
    """

    name: str
    values: tuple[float, ...]
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in KNOWN_ATTACKS:
            raise UnknownNameError(f"unknown grid attack {self.name!r}; known: {', '.join(sorted(KNOWN_ATTACKS))}")
        if not self.values:
            raise InputValidationError(f"attack {self.name!r}: the grid needs at least one hyperparameter value")
        if len(set(self.values)) != len(self.values):
            raise InputValidationError(f"attack {self.name!r}: duplicate hyperparameter values {self.values}")
        if any(float(v) <= 0 for v in self.values):
            raise InputValidationError(f"attack {self.name!r}: hyperparameter values must be positive")
        if KNOWN_ATTACKS[self.name] == "eps255" and any(float(v) > 255 for v in self.values):
            raise InputValidationError(f"attack {self.name!r}: eps*255 values must be <= 255")

    @property
    def unit(self) -> str:
        return KNOWN_ATTACKS[self.name]


@dataclass(frozen=True)
class GridSpec:
    """Attacks x hyperparameters (victims are given separately, as trained models)."""

    attacks: tuple[AttackSpec, ...]
    include_clean: bool = False

    def __post_init__(self) -> None:
        names = [a.name for a in self.attacks]
        if not names:
            raise InputValidationError("the grid needs at least one attack")
        if len(set(names)) != len(names):
            raise InputValidationError(f"duplicate attacks in the grid: {names}")

    @property
    def attack_names(self) -> list[str]:
        """Attack vocabulary (class order for the attack classifier), clean last if included."""
        return [a.name for a in self.attacks] + ([CLEAN] if self.include_clean else [])

    def attack(self, name: str) -> AttackSpec:
        for spec in self.attacks:
            if spec.name == name:
                return spec
        raise UnknownNameError(f"attack {name!r} is not in the grid; grid attacks: {', '.join(self.attack_names)}")

    def n_cells(self, n_victims: int) -> int:
        return n_victims * sum(len(a.values) for a in self.attacks)

    def to_dict(self) -> dict[str, Any]:
        return {"attacks": [{"name": a.name, "values": [float(v) for v in a.values], "params": dict(a.params)}
                            for a in self.attacks],
                "include_clean": self.include_clean}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> GridSpec:
        try:
            attacks = tuple(AttackSpec(name=str(a["name"]), values=tuple(float(v) for v in a["values"]),
                                       params=dict(a.get("params", {}))) for a in payload["attacks"])
            return cls(attacks=attacks, include_clean=bool(payload.get("include_clean", False)))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, InputValidationError):
                raise
            raise InputValidationError(f"invalid grid spec: {error}") from None


#: PGD's step size and steps and C&W's search schedule are OPEN in the paper; these are the choices.
PGD_PARAMS: dict[str, Any] = {"steps": 10, "alpha_ratio": 0.25, "random_start": True}
#: Default grid C&W: kappa 5 runs the attack's defaults (6 search rounds x 200 Adam steps, lr 0.05); each
#: next kappa continues from the previous one's examples for 2 x 50 steps (`cw_kappa_sweep`). Measured
#: on a ResNet-18 victim (docs/RESULTS.md): 7.4x faster than 20 independent calls, every kappa reached,
#: median L2 3% below the independent calls'.
CW_PARAMS: dict[str, Any] = {"warm_search_steps": 2, "warm_steps": 50}
#: The small grid's C&W schedule (lab notes: 5 x 100 steps at lr 0.1 costs 3-15% more L2, 2x faster);
#: cut further to 3 x 50 so that a CPU run finishes in minutes. `reached` records what it achieved.
CW_PARAMS_SMALL: dict[str, Any] = {"search_steps": 3, "steps": 50, "lr": 0.1}


def default_grid(include_clean: bool = False) -> GridSpec:
    """The paper's Table 1: FGSM and PGD eps 10..200/255 step 10; C&W kappa 5..100 step 5."""
    eps = tuple(float(v) for v in range(10, 201, 10))
    kappa = tuple(float(v) for v in range(5, 101, 5))
    return GridSpec(attacks=(AttackSpec("fgsm", eps), AttackSpec("pgd-linf", eps, dict(PGD_PARAMS)),
                             AttackSpec("cw-l2", kappa, dict(CW_PARAMS))), include_clean=include_clean)


def small_grid(include_clean: bool = False) -> GridSpec:
    """A CPU-sized grid: 5 values per attack spread over the same ranges as Table 1."""
    eps = (20.0, 60.0, 100.0, 140.0, 180.0)
    kappa = (10.0, 30.0, 50.0, 70.0, 90.0)
    return GridSpec(attacks=(AttackSpec("fgsm", eps), AttackSpec("pgd-linf", eps, dict(PGD_PARAMS)),
                             AttackSpec("cw-l2", kappa, dict(CW_PARAMS_SMALL))), include_clean=include_clean)


GRIDS = {"default": default_grid, "small": small_grid}


def get_grid(name: str, include_clean: bool = False) -> GridSpec:
    if name not in GRIDS:
        raise UnknownNameError(f"unknown grid {name!r}; known: {', '.join(sorted(GRIDS))}")
    return GRIDS[name](include_clean=include_clean)


__all__ = ["AttackSpec", "GridSpec", "CLEAN", "default_grid", "small_grid", "get_grid", "GRIDS", "KNOWN_ATTACKS"]
