"""Attribution answers: an attributor's outputs on images (checked against its card's shape), turned
into a family (or "not adversarial" / "unknown attack"), a victim architecture and a strength in its
family's unit, with calibrated probabilities, by the open-set rule its card holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from advforensics.attribution.card import AttributorCard
from advforensics.attribution.grid import KNOWN_ATTACKS
from advforensics.attribution.openset import NOT_ADVERSARIAL, UNKNOWN, OpenSetRule
from advforensics.errors import InputValidationError
from advforensics.utils import check_images, module_device
from advforensics.vocab import Unit

#: strength units as a user reads them
UNIT_NAMES = {Unit.EPS255.value: "eps (/255)", Unit.KAPPA.value: "kappa (logits)", Unit.NONE.value: ""}


@dataclass
class Attribution:
    """An attributor's answers, one per image."""

    attack: list[str]  # a family, NOT_ADVERSARIAL or UNKNOWN
    attack_probability: np.ndarray  # (B,) calibrated top probability of the attack head
    attack_probs: np.ndarray  # (B, A) calibrated, over the card's attack names
    victim: list[str]  # architecture (or "clean")
    victim_probability: np.ndarray  # (B,)
    hyper: np.ndarray  # (B,) strength in the answered family's unit; NaN where it has none
    hyper_unit: list[str]
    attack_names: list[str] = field(default_factory=list)
    victim_names: list[str] = field(default_factory=list)

    def records(self, names: list[str] | None = None, rows: list[int] | None = None) -> list[dict[str, Any]]:
        """One JSON-ready dict per image, with its row index (and source name where given)."""
        out = []
        for i in range(len(self.attack)):
            rec: dict[str, Any] = {"row": int(rows[i]) if rows is not None else i}
            if names is not None:
                rec["source"] = names[i]
            hyper = None if np.isnan(self.hyper[i]) else float(self.hyper[i])
            rec.update({"attack": self.attack[i], "attack_probability": float(self.attack_probability[i]),
                        "attack_probabilities": {n: float(p) for n, p in zip(self.attack_names, self.attack_probs[i])},
                        "victim": self.victim[i] if self.attack[i] != NOT_ADVERSARIAL else None,
                        "victim_probability": float(self.victim_probability[i]),
                        "strength": hyper, "strength_unit": self.hyper_unit[i]})
            out.append(rec)
        return out


def check_input(card: AttributorCard, x: torch.Tensor) -> None:
    """Images must match the attributor's channels and size (a wrong size is an error, not a resize)."""
    c, h, w = card.image_shape
    check_images(x, "images", channels=int(c), size=(int(h), int(w)))


@torch.no_grad()
def model_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
    """attack_logits (B, A), victim_logits (B, V), hyper (B,), attack_features (B, F) where the model has them.

    Runs on the model's device, a batch at a time; the outputs come back as CPU arrays.
    """
    model.eval()
    device = module_device(model)
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in x.split(batch_size):
        out = model(chunk.to(device))
        for key in ("attack_logits", "victim_logits", "hyper", "attack_features"):
            if key in out:
                parts.setdefault(key, []).append(out[key].float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def predict_outputs(model: nn.Module, card: AttributorCard, x: torch.Tensor, batch_size: int = 256
                    ) -> dict[str, np.ndarray]:
    """attack_probs (B, A), victim_probs (B, V), hyper (B,) where the model has those heads (uncalibrated)."""
    check_input(card, x)
    out = model_logits(model, x, batch_size)
    probs = {"attack_logits": "attack_probs", "victim_logits": "victim_probs"}
    return {probs.get(k, k): (torch.from_numpy(v).softmax(1).numpy() if k in probs else v) for k, v in out.items()
            if k != "attack_features"}


def open_set_rule(card: AttributorCard) -> OpenSetRule:
    """The card's rule; a card without one (no calibration split) abstains never, temperature 1."""
    payload = card.open_set
    if payload is None:
        return OpenSetRule(1.0, 1.0, 0.0, 0.0, 0.0, 0)
    return OpenSetRule.from_dict(payload)


def attribute(model: nn.Module, card: AttributorCard, x: torch.Tensor, score: str | None = None) -> Attribution:
    """Answers for images `x` (B, C, H, W) in [0, 1] of the card's channels and size; `score` overrides
    the card's abstention score."""
    check_input(card, x)
    return answer(model_logits(model, x), card, score)


def answer(out: dict[str, np.ndarray], card: AttributorCard, score: str | None = None) -> Attribution:
    """Answers from an attributor's outputs (`evaluate.model_logits`), by the card's open-set rule."""
    if "attack_logits" not in out:
        raise InputValidationError("open-set answers need an attributor with an attack head")
    rule = open_set_rule(card)
    if score is not None:
        rule = rule.with_score(score)
    attack_names, victim_names = list(card.attack_names), list(card.victim_names)
    answers = rule.answers(out["attack_logits"], attack_names, out.get("attack_features"))
    attack_probs = rule.attack_probs(out["attack_logits"])
    n = len(answers)
    if "victim_logits" in out:
        victim_probs = rule.victim_probs(out["victim_logits"])
        victim = [victim_names[int(i)] for i in victim_probs.argmax(1)]
        victim_p = victim_probs.max(1)
    else:
        victim, victim_p = ["-"] * n, np.full(n, np.nan)
    units = card.hyper_units
    hyper = out["hyper"].astype(np.float64).copy() if "hyper" in out else np.full(n, np.nan)
    unit = []
    for i, a in enumerate(answers):
        u = units.get(a, KNOWN_ATTACKS.get(a, Unit.NONE))
        if a in (NOT_ADVERSARIAL, UNKNOWN) or u == Unit.NONE:
            hyper[i] = np.nan
            u = Unit.NONE.value
        unit.append(UNIT_NAMES.get(u, u))
    return Attribution(attack=answers, attack_probability=attack_probs.max(1), attack_probs=attack_probs,
                       victim=victim, victim_probability=victim_p, hyper=hyper, hyper_unit=unit,
                       attack_names=attack_names, victim_names=victim_names)


__all__ = ["Attribution", "UNIT_NAMES", "answer", "attribute", "check_input", "model_logits", "open_set_rule",
           "predict_outputs"]
