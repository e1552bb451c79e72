"""The attack grid of an attribution corpus: attacks x hyperparameter values x victims (MTAA Table 1).

The grid is data, not code: a `GridSpec` round-trips through JSON (it is stored in the corpus
manifest), so a corpus always says exactly which attacks, budgets and fixed parameters made it.
Hyperparameters are stored in the paper's units: epsilon * 255 for FGSM/PGD, kappa for C&W, so one
regressor sees one scale (RMSE is reported in those units). In the field grids kappa is in logits
(kappa_scale 1): the margin the example holds over the runner-up class on its victim.

An attack family (the attack label an attributor learns) may appear several times in a grid, once per
variant: another schedule (step size and count, random start, C&W's c and learning rate) or another
implementation (the project's own code, or ART's). A grid that spans each family's variants teaches the
family, not one implementation of it (issue 11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from advforensics.errors import InputValidationError, UnknownNameError
from advforensics.vocab import Implementation, Unit

#: Label used for the optional false-alarm class (clean images): attack and victim are both "clean".
CLEAN = "clean"

#: Attack families the corpus generator knows how to run, and the unit of their hyperparameter
#: (Unit.NONE, "none": the family has no strength, e.g. DeepFool stops at the boundary).
KNOWN_ATTACKS = {"fgsm": Unit.EPS255, "pgd-linf": Unit.EPS255, "cw-l2": Unit.KAPPA, "deepfool": Unit.NONE,
                 "square-linf": Unit.EPS255}
#: Families only ART implements here.
ART_ONLY = ("square-linf",)
#: Who implements a variant: the project's attacks, or the Adversarial Robustness Toolbox.
IMPLEMENTATIONS = Implementation.values()  # ("advforensics", "art")


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the grid: its family, hyperparameter values, fixed parameters and variant.

    name: the attack family (the attributor's attack label).
    values: eps * 255 for "fgsm"/"pgd-linf"/"square-linf" (10 means eps = 10/255); kappa for "cw-l2";
        a single placeholder 0 for a family without strength ("deepfool").
    params: fixed keyword arguments of the implementation (e.g. PGD steps). For PGD, `alpha_ratio`
        (step size as a fraction of eps) or `alpha255` (a fixed step in /255) replaces alpha.
    variant: names this schedule when a family appears more than once (unit ids carry it).
    implementation: "advforensics" (the project's attacks) or "art".
    """

    name: str
    values: tuple[float, ...]
    params: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    implementation: str = Implementation.ADVFORENSICS.value

    def __post_init__(self) -> None:
        if self.name not in KNOWN_ATTACKS:
            raise UnknownNameError(f"unknown grid attack {self.name!r}; known: {', '.join(sorted(KNOWN_ATTACKS))}")
        if self.implementation not in IMPLEMENTATIONS:
            raise UnknownNameError(f"unknown implementation {self.implementation!r}; known: "
                                   f"{', '.join(IMPLEMENTATIONS)}")
        if self.name in ART_ONLY and self.implementation != Implementation.ART:
            raise InputValidationError(f"attack {self.name!r} is implemented by ART only (implementation='art')")
        if "__" in self.variant or "/" in self.variant:
            raise InputValidationError(f"variant names may not hold '__' or '/', got {self.variant!r}")
        if KNOWN_ATTACKS[self.name] is Unit.NONE:
            if tuple(float(v) for v in self.values) != (0.0,):
                raise InputValidationError(f"attack {self.name!r} has no strength; its values must be (0,)")
            return
        if not self.values:
            raise InputValidationError(f"attack {self.name!r}: the grid needs at least one hyperparameter value")
        if len(set(self.values)) != len(self.values):
            raise InputValidationError(f"attack {self.name!r}: duplicate hyperparameter values {self.values}")
        if not all(math.isfinite(float(v)) for v in self.values):
            raise InputValidationError(f"attack {self.name!r}: hyperparameter values must be finite, got {self.values}")
        if any(float(v) <= 0 for v in self.values):
            raise InputValidationError(f"attack {self.name!r}: hyperparameter values must be positive")
        if KNOWN_ATTACKS[self.name] is Unit.EPS255 and any(float(v) > 255 for v in self.values):
            raise InputValidationError(f"attack {self.name!r}: eps*255 values must be <= 255")

    @property
    def unit(self) -> str:
        return KNOWN_ATTACKS[self.name].value

    @property
    def key(self) -> str:
        """Unique name of this variant in a grid: "pgd-linf" or "pgd-linf~a2-s10"."""
        return f"{self.name}~{self.variant}" if self.variant else self.name


@dataclass(frozen=True)
class GridSpec:
    """Attacks x hyperparameters (victims are given separately, as trained models).

    values_per_image: attack each clean image with this many of a variant's values, drawn at random
        per image (None: every value). A wide grid of variants stays affordable, and every value still
        gets its share of the clean images.
    variants_per_image: attack each clean image (on each victim) with one variant of each family, drawn
        at random per image and victim (1), or with every variant (None).
    benign: harmless changes of the clean images, stored as extra clean rows ("not adversarial"):
        `advforensics.evidence.reencode` specs such as "noise:4" or "jpeg:75". Needs include_clean.
    """

    attacks: tuple[AttackSpec, ...]
    include_clean: bool = False
    values_per_image: int | None = None
    benign: tuple[str, ...] = ()
    variants_per_image: int | None = None

    def __post_init__(self) -> None:
        keys = [a.key for a in self.attacks]
        if not keys:
            raise InputValidationError("the grid needs at least one attack")
        if len(set(keys)) != len(keys):
            raise InputValidationError(f"duplicate attack variants in the grid: {keys}")
        if self.values_per_image is not None and self.values_per_image < 1:
            raise InputValidationError(f"values_per_image must be >= 1, got {self.values_per_image}")
        if self.variants_per_image not in (None, 1):
            raise InputValidationError(f"variants_per_image must be 1 or None, got {self.variants_per_image}")
        if self.benign and not self.include_clean:
            raise InputValidationError("benign changes are clean rows: the grid needs include_clean")
        if self.benign:
            from advforensics.evidence.transforms import check_reencoding

            for spec in self.benign:
                check_reencoding(spec)

    @property
    def attack_names(self) -> list[str]:
        """Attack vocabulary (class order for the attack classifier): families, clean last if included."""
        return list(dict.fromkeys(a.name for a in self.attacks)) + ([CLEAN] if self.include_clean else [])

    def attack(self, name: str) -> AttackSpec:
        """The first variant of family `name`."""
        for spec in self.attacks:
            if spec.name == name:
                return spec
        raise UnknownNameError(f"attack {name!r} is not in the grid; grid attacks: {', '.join(self.attack_names)}")

    def variant(self, key: str) -> AttackSpec:
        for spec in self.attacks:
            if spec.key == key:
                return spec
        raise UnknownNameError(f"attack variant {key!r} is not in the grid")

    def n_cells(self, n_victims: int) -> int:
        return n_victims * sum(len(a.values) for a in self.attacks)

    def to_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "attacks": [{"name": a.name, "values": [float(v) for v in a.values], "params": dict(a.params),
                         **({"variant": a.variant} if a.variant else {}),
                         **({"implementation": a.implementation}
                            if a.implementation != Implementation.ADVFORENSICS else {})}
                        for a in self.attacks],
            "include_clean": self.include_clean}
        if self.values_per_image is not None:
            payload["values_per_image"] = self.values_per_image
        if self.benign:
            payload["benign"] = list(self.benign)
        if self.variants_per_image is not None:
            payload["variants_per_image"] = self.variants_per_image
        return payload

    def variants_of(self, family: str) -> list[AttackSpec]:
        return [a for a in self.attacks if a.name == family]

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> GridSpec:
        try:
            attacks = tuple(AttackSpec(name=str(a["name"]), values=tuple(float(v) for v in a["values"]),
                                       params=dict(a.get("params", {})), variant=str(a.get("variant", "")),
                                       implementation=str(a.get("implementation",
                                                                Implementation.ADVFORENSICS.value)))
                            for a in payload["attacks"])
            vpi, vari = payload.get("values_per_image"), payload.get("variants_per_image")
            return cls(attacks=attacks, include_clean=bool(payload.get("include_clean", False)),
                       values_per_image=None if vpi is None else int(vpi),
                       benign=tuple(str(b) for b in payload.get("benign", ())),
                       variants_per_image=None if vari is None else int(vari))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, InputValidationError):
                raise
            raise InputValidationError(f"invalid grid spec: {error}") from None


#: PGD's step size and steps and C&W's search schedule are OPEN in the paper; these are the choices.
PGD_PARAMS: dict[str, Any] = {"steps": 10, "alpha_ratio": 0.25, "random_start": True}
#: Default grid C&W: kappa 5 runs the attack's defaults (6 search rounds x 200 Adam steps, lr 0.05); each
#: next kappa continues from the previous one's examples for 2 x 50 steps (`cw_kappa_sweep`). Measured
#: on a ResNet-18 victim (docs/history/attribution-sessions-1-4.md): 7.4x faster than 20 independent calls, every kappa reached,
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


#: Field grids (issue 11). Strengths: eps in /255, kappa in logits (kappa_scale 1, the same unit on every
#: victim). Values a real attacker might pick; each clean image gets one of them per variant.
FIELD_EPS = (16.0, 24.0, 32.0, 48.0, 64.0, 80.0, 96.0, 128.0)
FIELD_KAPPA = (1.0, 2.0, 4.0, 8.0)
#: Held-out values lie between the training ones: the regressor must interpolate, not look up.
HELDOUT_EPS = (20.0, 40.0, 56.0, 72.0, 112.0)
HELDOUT_KAPPA = (1.5, 3.0, 6.0)
#: Benign changes of clean images that must read "not adversarial" (training / held out).
FIELD_BENIGN = ("noise:4", "noise:8", "jpeg:75", "jpeg:90")
HELDOUT_BENIGN = ("noise:2", "noise:12", "jpeg:60", "jpeg:95", "resize:0.75")


def field_grid(include_clean: bool = True) -> GridSpec:
    """Each family over the variables an attacker changes, from the project's code.

    PGD: step as a fraction of eps or fixed in /255, 5-20 steps, with and without random start.
    C&W: binary search over c, or one fixed c; 30-60 Adam steps; learning rates 0.03-0.1.
    DeepFool: overshoot 0.02 and 0.1, 10 or 3 candidate classes.
    """
    eps, kappa = FIELD_EPS, FIELD_KAPPA
    pgd = (("r0.25-s10-rs", {"alpha_ratio": 0.25, "steps": 10, "random_start": True}),
           ("r0.1-s20", {"alpha_ratio": 0.1, "steps": 20, "random_start": False}),
           ("f1-s20-rs", {"alpha255": 1.0, "steps": 20, "random_start": True}),
           ("f4-s10", {"alpha255": 4.0, "steps": 10, "random_start": False}),
           ("r0.5-s5-rs", {"alpha_ratio": 0.5, "steps": 5, "random_start": True}))
    cw = (("bs2-s40-lr0.1", {"search_steps": 2, "steps": 40, "lr": 0.1}),
          ("c3-s60-lr0.03", {"search_steps": 1, "c0": 3.0, "steps": 60, "lr": 0.03}),
          ("c10-s30-lr0.05", {"search_steps": 1, "c0": 10.0, "steps": 30, "lr": 0.05}))
    deepfool = (("os0.02", {"overshoot": 0.02, "max_iter": 50, "nb_grads": 10}),
                ("os0.1-g3", {"overshoot": 0.1, "max_iter": 50, "nb_grads": 3}))
    return GridSpec(attacks=(AttackSpec("fgsm", eps),
                             *(AttackSpec("pgd-linf", eps, p, variant=v) for v, p in pgd),
                             *(AttackSpec("cw-l2", kappa, p, variant=v) for v, p in cw),
                             *(AttackSpec("deepfool", (0.0,), p, variant=v) for v, p in deepfool)),
                    include_clean=include_clean, values_per_image=1, variants_per_image=1,
                    benign=FIELD_BENIGN if include_clean else ())


def heldout_grid(include_clean: bool = True) -> GridSpec:
    """Implementations and schedules `field_grid` never uses, at values between its values.

    ART's FGSM, PGD (random init, step 0.2 eps, 20 iterations) and C&W-L2 (3 x 15 steps, lr 0.05, c from 1);
    the project's PGD at torchattacks' default schedule (2/255 x 10, random start) and at step eps/10 x 40
    with random start; the project's C&W at one fixed c = 1, 80 steps, lr 0.02; Square (ART, 200 queries), a family
    no field corpus holds; benign changes the corpus never shows.
    """
    eps, kappa = HELDOUT_EPS, HELDOUT_KAPPA
    return GridSpec(attacks=(
        AttackSpec("fgsm", eps, variant="art", implementation="art"),
        AttackSpec("pgd-linf", eps, {"eps_step_ratio": 0.2, "max_iter": 20, "num_random_init": 1},
                   variant="art-r0.2-s20-rs", implementation="art"),
        AttackSpec("pgd-linf", eps, {"alpha255": 2.0, "steps": 10, "random_start": True}, variant="f2-s10-rs"),
        AttackSpec("pgd-linf", eps, {"alpha_ratio": 0.1, "steps": 40, "random_start": True}, variant="r0.1-s40-rs"),
        AttackSpec("cw-l2", kappa, {"learning_rate": 0.05, "binary_search_steps": 3, "max_iter": 15,
                                    "initial_const": 1.0}, variant="art-bs3-s15-lr0.05", implementation="art"),
        AttackSpec("cw-l2", kappa, {"search_steps": 1, "c0": 1.0, "steps": 80, "lr": 0.02}, variant="c1-s80-lr0.02"),
        AttackSpec("square-linf", (48.0, 80.0), {"max_iter": 200}, variant="art-q200", implementation="art")),
        include_clean=include_clean, values_per_image=1, variants_per_image=1,
        benign=HELDOUT_BENIGN if include_clean else ())


GRIDS = {"default": default_grid, "small": small_grid, "field": field_grid, "heldout": heldout_grid}


def get_grid(name: str, include_clean: bool = False) -> GridSpec:
    if name not in GRIDS:
        raise UnknownNameError(f"unknown grid {name!r}; known: {', '.join(sorted(GRIDS))}")
    return GRIDS[name](include_clean=include_clean)


__all__ = ["AttackSpec", "GridSpec", "CLEAN", "default_grid", "small_grid", "field_grid", "heldout_grid", "get_grid",
           "GRIDS", "KNOWN_ATTACKS", "IMPLEMENTATIONS"]


def load_grid(grid: str, include_clean: bool = False) -> GridSpec:
    """A named grid (GRIDS) or a grid JSON file; a bad name or file is a one-line InputValidationError."""
    import json
    from pathlib import Path

    if grid in GRIDS:
        return get_grid(grid, include_clean)
    path = Path(grid)
    if not path.is_file():
        raise InputValidationError(f"--grid must be one of {', '.join(GRIDS)} or a grid JSON file, got {grid!r}")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputValidationError(f"grid file {path} is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise InputValidationError(f"grid file {path} must hold a JSON object with an 'attacks' list")
    if include_clean:
        payload["include_clean"] = True
    return GridSpec.from_dict(payload)
