"""Open-set answers for attribution: "not adversarial", "unknown attack", and calibrated probabilities.

An attributor trained on some attack families names one of them for every image it is shown. The
investigator needs two more answers (issue 11):

- "not adversarial": the attack head's clean class, trained on clean images and benign changes of
  them (noise, JPEG; `GridSpec.benign`).
- "unknown attack": an abstention, when the attack head's top probability falls below a threshold.

Both heads' probabilities are temperature-scaled (Guo et al. 2017) on a calibration split: clean
images held out from training, never seen by the gradient steps. The threshold is the quantile of the
calibration rows' top probability that gives the target false-abstention rate on known attacks, so
the rate is a measured promise, not a guess; the evaluation reports it again on the test split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from advforensics.errors import InputValidationError

NOT_ADVERSARIAL = "not adversarial"
UNKNOWN = "unknown attack"


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T)."""
    if len(logits) == 0:
        raise InputValidationError("temperature scaling needs calibration rows")

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(targets)), targets].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


@dataclass(frozen=True)
class OpenSetRule:
    """Temperatures of both heads and the abstention threshold on the attack head's top probability.

    target_false_abstention: the share of known-attack calibration rows allowed to read "unknown".
    calibration_false_abstention: what the threshold gives on those rows (<= target up to ties).
    """

    attack_temperature: float
    victim_temperature: float
    threshold: float
    target_false_abstention: float
    calibration_false_abstention: float
    n_calibration: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, float]) -> OpenSetRule:
        try:
            return cls(**{k: payload[k] for k in cls.__dataclass_fields__})  # type: ignore[arg-type]
        except (KeyError, TypeError) as error:
            raise InputValidationError(f"invalid open-set rule in the attributor card: {error}") from None

    def attack_probs(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits / self.attack_temperature, axis=1)

    def victim_probs(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits / self.victim_temperature, axis=1)

    def answers(self, attack_logits: np.ndarray, attack_names: list[str], clean: str = "clean") -> list[str]:
        """One answer per row: a family, NOT_ADVERSARIAL, or UNKNOWN."""
        probs = self.attack_probs(attack_logits)
        top = probs.argmax(1)
        out = []
        for p, t in zip(probs.max(1), top):
            if p < self.threshold:
                out.append(UNKNOWN)
            else:
                out.append(NOT_ADVERSARIAL if attack_names[t] == clean else attack_names[t])
        return out


def fit_open_set(attack_logits: np.ndarray, attack_targets: np.ndarray, victim_logits: np.ndarray | None,
                 victim_targets: np.ndarray | None, target_false_abstention: float = 0.03) -> OpenSetRule:
    """Fit both temperatures and the threshold on calibration rows (all of them known classes)."""
    if not 0.0 <= target_false_abstention < 1.0:
        raise InputValidationError(f"target false-abstention must be in [0, 1), got {target_false_abstention}")
    t_attack = fit_temperature(attack_logits, attack_targets)
    t_victim = fit_temperature(victim_logits, victim_targets) if victim_logits is not None else 1.0
    top = softmax(attack_logits / t_attack, axis=1).max(1)
    # the largest threshold that abstains on at most the target share of calibration rows
    threshold = float(np.quantile(top, target_false_abstention, method="lower")) if target_false_abstention > 0 \
        else 0.0
    measured = float((top < threshold).mean())
    return OpenSetRule(attack_temperature=t_attack, victim_temperature=t_victim, threshold=threshold,
                       target_false_abstention=float(target_false_abstention),
                       calibration_false_abstention=measured, n_calibration=int(len(top)))


__all__ = ["OpenSetRule", "fit_open_set", "fit_temperature", "NOT_ADVERSARIAL", "UNKNOWN"]
