"""The project's closed vocabularies, as `str` enums, in one module that imports only the standard library.

A member is a `str`: it compares equal to its value, hashes as it (a dict keyed by the plain string finds
it), prints and formats as it, and `json.dumps` writes it as the plain string. Every value is the exact
string that files on disk, JSON reports and command lines already hold; change none of them.

Modules that must stay light (the command line, the investigation report) import their names from here
rather than from the heavy module that uses them (attacks import torch, attribution numpy and scipy).
Modules that expose a plain-string tuple or constant (`tracing.names.FORMULA_RULES`,
`attribution.openset.UNKNOWN`, ...) build it from these enums.
"""

from __future__ import annotations

import enum


class Vocab(str, enum.Enum):
    """Base of the vocabularies: a `str` enum whose str() and format() give the value, on every Python.

    (A plain `class X(str, Enum)` prints as "X.MEMBER" on Python 3.10 and 3.11.)"""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return format(str.__str__(self), format_spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The values as plain strings, in definition order (e.g. for click.Choice)."""
        return tuple(member.value for member in cls)


# ---------------------------------------------------------------- attacks

class Norm(Vocab):
    """The norm an attack bounds or minimises (attacks/base.py)."""

    L2 = "l2"
    LINF = "linf"


class ThreatModel(Vocab):
    """What an attack sees of the model (attacks/base.py)."""

    WHITE_BOX = "white-box"  # gradients of the model's scores
    HARD_LABEL = "hard-label"  # only argmax labels, counted as queries


# ---------------------------------------------------------------- tracing

class ScoreRule(Vocab):
    """How a copy's score is read from its output (see tracing/scores.py for each rule)."""

    DOL = "dol"
    MARGIN = "margin"
    PROXIMITY = "proximity"
    LEARNED = "learned"  # fitted by the seller on simulated attackers (tracing/learned.py)

    @property
    def is_formula(self) -> bool:
        """Read off one shared pass and calibrated by a null (every rule but LEARNED)."""
        return self is not ScoreRule.LEARNED

    @classmethod
    def formula_values(cls) -> tuple[str, ...]:
        """The formula rules' values, in definition order."""
        return tuple(r.value for r in cls if r.is_formula)


class LearnedFeatures(Vocab):
    """The feature sets a learned tracing rule can read (tracing/scores.py FEATURE_SETS): BASE, the one
    shared pass; SQUEEZED also C's label on the contrast-stretched example (one more pass of C)."""

    BASE = "base"
    SQUEEZED = "squeezed"


class Stage(Vocab):
    """The stages of `trace experiment`, in the order they run (see studies/tracing.py)."""

    CLEAN = "clean"
    TRACING = "tracing"
    FIELD = "field"
    SCALING = "scaling"
    CONTROLS = "controls"
    COLLUSION = "collusion"
    PEER = "peer"


# ---------------------------------------------------------------- attribution


class AttributionStage(Vocab):
    """The stages of `attribution experiment`, in the order they run (see studies/attribution.py)."""

    CORPUS = "corpus"
    TRAIN = "train"
    ERRORS = "errors"


class Answer(Vocab):
    """The open-set answers an attributor gives besides an attack family (attribution/openset.py)."""

    NOT_ADVERSARIAL = "not adversarial"  # the attack head's clean class
    UNKNOWN = "unknown attack"  # an abstention: no known family fits


class OpenSetScore(Vocab):
    """What the "unknown attack" rule measures (attribution/openset.py)."""

    MSP = "msp"  # the attack head's top calibrated probability
    DISTANCE = "distance"  # Mahalanobis distance of the features to the nearest known class
    EITHER = "either"  # abstain when either says so, each at half the target rate


class Implementation(Vocab):
    """Who implements an attack variant of an attribution grid (attribution/grid.py)."""

    ADVFORENSICS = "advforensics"  # the project's attacks
    ART = "art"  # the Adversarial Robustness Toolbox


class Unit(Vocab):
    """The unit of an attribution grid family's hyperparameter (attribution/grid.py)."""

    EPS255 = "eps255"  # epsilon * 255
    KAPPA = "kappa"  # C&W's confidence margin
    NONE = "none"  # the family has no strength (DeepFool stops at the boundary)


__all__ = ["Vocab", "Norm", "ThreatModel", "ScoreRule", "Stage", "Answer", "OpenSetScore", "Implementation",
           "Unit", "AttributionStage", "LearnedFeatures"]
