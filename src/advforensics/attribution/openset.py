"""Open-set answers for attribution: "not adversarial", "unknown attack", and calibrated probabilities.

An attributor trained on some attack families names one of them for every image it is shown. The
investigator needs two more answers (issue 11):

- "not adversarial": the attack head's clean class, trained on clean images and benign changes of
  them (noise, JPEG; `GridSpec.benign`).
- "unknown attack": an abstention, when the attack head's top probability falls below a threshold.

Both heads' probabilities are temperature-scaled (Guo et al. 2017) on a calibration split: clean
images held out from training, never seen by the gradient steps. Two abstention scores are fitted:

- "msp": the attack head's top (calibrated) probability;
- "distance": the Mahalanobis distance of the attack branch's features to the nearest known class
  (class means and a Ledoit-Wolf shared covariance from training rows; Lee et al. 2018), which can
  see an example that lies far from every family even where the head is confident;
- "either": abstain when either says so, each at half the target rate (the union stays within it).

Each threshold is the calibration quantile that gives the target false-abstention rate on known
classes, so the rate is a measured promise, not a guess; the evaluation reports it again on the test
split. `score` names the one `answers` uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from advforensics.errors import InputValidationError
from advforensics.vocab import Answer, OpenSetScore

NOT_ADVERSARIAL = Answer.NOT_ADVERSARIAL.value
UNKNOWN = Answer.UNKNOWN.value


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T)."""
    if len(logits) == 0:
        raise InputValidationError("temperature scaling needs calibration rows")

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(targets)), targets].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


SCORES = OpenSetScore.values()  # ("msp", "distance", "either")


@dataclass(frozen=True)
class OpenSetRule:
    """Temperatures of both heads and the abstention thresholds.

    threshold: abstain when the attack head's top probability is below it ("msp").
    distance_threshold: abstain when the features' distance to the nearest class mean exceeds it.
    class_means (A, F) and precision (F, F): the distance's Gaussian model; empty without features.
    target_false_abstention: the share of known calibration rows allowed to read "unknown".
    calibration_false_abstention: what the chosen score's threshold gives on those rows.
    """

    attack_temperature: float
    victim_temperature: float
    threshold: float
    target_false_abstention: float
    calibration_false_abstention: float
    n_calibration: int
    score: str = "msp"
    distance_threshold: float = float("inf")
    either_thresholds: tuple[float, float] = (0.0, float("inf"))  # (msp, distance), each at half the target
    clean_threshold: float | None = None  # "not adversarial" when p(clean) reaches it (a stated clean recall)
    target_clean_recall: float | None = None
    class_means: tuple[tuple[float, ...], ...] = ()
    precision: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise InputValidationError(f"open-set score must be one of {SCORES}, got {self.score!r}")
        if self.score in ("distance", "either") and not self.class_means:
            raise InputValidationError(f"the {self.score} score needs class means (an attributor with features)")

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["class_means"] = [list(m) for m in self.class_means]
        payload["precision"] = [list(r) for r in self.precision]
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> OpenSetRule:
        try:
            fields = {k: payload[k] for k in cls.__dataclass_fields__ if k in payload}
            fields["class_means"] = tuple(tuple(float(v) for v in m) for m in fields.get("class_means", ()))
            fields["precision"] = tuple(tuple(float(v) for v in r) for r in fields.get("precision", ()))
            if fields.get("clean_threshold") is not None:
                fields["clean_threshold"] = float(fields["clean_threshold"])
            if "either_thresholds" in fields:
                fields["either_thresholds"] = tuple(float(v) for v in fields["either_thresholds"])
            return cls(**fields)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as error:
            raise InputValidationError(f"invalid open-set rule in the attributor card: {error}") from None

    def with_score(self, score: str) -> OpenSetRule:
        return replace(self, score=score)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(B,) Mahalanobis distance of each row's features to the nearest class mean."""
        means, precision = np.asarray(self.class_means), np.asarray(self.precision)
        diff = features[:, None, :] - means[None, :, :]  # (B, A, F)
        return np.sqrt(np.einsum("baf,fg,bag->ba", diff, precision, diff).min(axis=1))

    def abstains(self, attack_logits: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """(B,) bool: the rule answers "unknown attack"."""
        if self.score == "msp":
            return self.attack_probs(attack_logits).max(1) < self.threshold
        if features is None:
            raise InputValidationError(f"the {self.score} score needs the attack branch's features")
        if self.score == "distance":
            return self.distances(features) > self.distance_threshold
        low_p, far = self.either_thresholds
        return (self.attack_probs(attack_logits).max(1) < low_p) | (self.distances(features) > far)

    def attack_probs(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits / self.attack_temperature, axis=1)

    def victim_probs(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits / self.victim_temperature, axis=1)

    def answers(self, attack_logits: np.ndarray, attack_names: list[str], features: np.ndarray | None = None,
                clean: str = "clean") -> list[str]:
        """One answer per row: a family, NOT_ADVERSARIAL, or UNKNOWN.

        With a `clean_threshold`, a row whose calibrated clean probability reaches it is "not
        adversarial" whatever else the head says (the operating point for a stated clean recall);
        the other rows abstain or name their most probable family.
        """
        probs = self.attack_probs(attack_logits)
        top = attack_logits.argmax(1)
        abstain = self.abstains(attack_logits, features)
        if self.clean_threshold is not None and clean in attack_names:
            k = attack_names.index(clean)
            benign = probs[:, k] >= self.clean_threshold
            families = np.where(np.arange(len(attack_names)) == k, -np.inf, attack_logits).argmax(1)
            return [NOT_ADVERSARIAL if b else (UNKNOWN if a else attack_names[f])
                    for b, a, f in zip(benign, abstain, families)]
        return [UNKNOWN if a else (NOT_ADVERSARIAL if attack_names[t] == clean else attack_names[t])
                for a, t in zip(abstain, top)]


def fit_distance(features: np.ndarray, targets: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class means (A, F), shared precision (F, F)) of features, Ledoit-Wolf shrunk; absent classes far away."""
    from sklearn.covariance import LedoitWolf

    dim = features.shape[1]
    means = np.full((n_classes, dim), 1e6)
    for k in range(n_classes):
        if (targets == k).any():
            means[k] = features[targets == k].mean(0)
    centred = features - means[targets]
    return means, LedoitWolf().fit(centred).precision_


def _lower(scores: np.ndarray, rate: float) -> float:
    """The largest threshold t with (scores < t) on at most `rate` of the rows."""
    return float(np.quantile(scores, rate, method="lower")) if rate > 0 else 0.0


def _upper(scores: np.ndarray, rate: float) -> float:
    """The smallest threshold t with (scores > t) on at most `rate` of the rows."""
    return float(np.quantile(scores, 1 - rate, method="higher")) if rate > 0 else float("inf")


def fit_open_set(attack_logits: np.ndarray, attack_targets: np.ndarray, victim_logits: np.ndarray | None,
                 victim_targets: np.ndarray | None, target_false_abstention: float = 0.03, *,
                 features: np.ndarray | None = None, train_features: np.ndarray | None = None,
                 train_targets: np.ndarray | None = None, score: str = "msp",
                 clean_class: int | None = None, target_clean_recall: float | None = None) -> OpenSetRule:
    """Fit both temperatures and the thresholds on calibration rows (all of them known classes).

    features: the calibration rows' attack-branch features; train_features/train_targets: training
    rows' features for the distance model (means, covariance), so the threshold is set on rows the
    model did not fit. clean_class, target_clean_recall: the clean class's index, and the share of
    calibration clean rows that must read "not adversarial" (sets `clean_threshold`; None: argmax).
    """
    if not 0.0 <= target_false_abstention < 1.0:
        raise InputValidationError(f"target false-abstention must be in [0, 1), got {target_false_abstention}")
    t_attack = fit_temperature(attack_logits, attack_targets)
    t_victim = fit_temperature(victim_logits, victim_targets) if victim_logits is not None else 1.0
    top = softmax(attack_logits / t_attack, axis=1).max(1)
    rule = OpenSetRule(attack_temperature=t_attack, victim_temperature=t_victim,
                       threshold=_lower(top, target_false_abstention),
                       target_false_abstention=float(target_false_abstention),
                       calibration_false_abstention=0.0, n_calibration=int(len(top)))  # measured below
    if features is not None and train_features is not None and train_targets is not None:
        means, precision = fit_distance(train_features, train_targets, attack_logits.shape[1])
        rule = replace(rule, class_means=tuple(map(tuple, means.tolist())),
                       precision=tuple(map(tuple, precision.tolist())))
        d = rule.distances(features)
        rule = replace(rule, distance_threshold=_upper(d, target_false_abstention),
                       either_thresholds=(_lower(top, target_false_abstention / 2),
                                          _upper(d, target_false_abstention / 2)))
    if score != "msp":
        rule = replace(rule, score=score)
    if target_clean_recall is not None and clean_class is not None:
        if not 0.0 < target_clean_recall < 1.0:
            raise InputValidationError(f"target clean recall must be in (0, 1), got {target_clean_recall}")
        p_clean = softmax(attack_logits / t_attack, axis=1)[attack_targets == clean_class, clean_class]
        if len(p_clean):
            rule = replace(rule, clean_threshold=_lower(p_clean, 1 - target_clean_recall),
                           target_clean_recall=float(target_clean_recall))
    rule = replace(rule, calibration_false_abstention=float(rule.abstains(attack_logits, features).mean()))
    return rule


__all__ = ["OpenSetRule", "fit_open_set", "fit_temperature", "fit_distance", "NOT_ADVERSARIAL", "UNKNOWN", "SCORES"]
