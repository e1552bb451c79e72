"""`Attributor`: a trained attributor file, loaded and verified, that answers for evidence.

    attributor = Attributor.load("runs/mtaa.safetensors")
    answers = attributor.predict("evidence.png")      # an Evidence, a path or a (B, C, H, W) tensor
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from advforensics.attribution.card import AttributorCard
from advforensics.attribution.answers import Attribution, attribute
from advforensics.evidence.io import Evidence, load_evidence


@dataclass
class Attributor:
    model: nn.Module
    card: AttributorCard
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> Attributor:
        """Load and verify an attributor file (tensor hash, architecture); a bad file -> CheckpointError."""
        from advforensics.attribution.card import load_attributor

        model, card = load_attributor(path)
        return cls(model=model.eval(), card=card, path=Path(path))

    @staticmethod
    def read_for(path: str | Path, evidence: str | Path) -> Evidence:
        """Evidence read at the channels and size an attributor file's card states, before (and without)
        loading its weights: a bad evidence file fails first. Unverified card: `load` verifies."""
        from advforensics.attribution.card import peek_card

        card = peek_card(path)
        if card is None:
            return load_evidence(evidence)
        c, h, w = card.image_shape
        return load_evidence(evidence, channels=c, size=(h, w))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.card.image_shape

    def read(self, evidence: Evidence | str | Path) -> Evidence:
        """Evidence at this attributor's channels and size (a path is read; an Evidence passes through)."""
        if isinstance(evidence, Evidence):
            return evidence
        c, h, w = self.image_shape
        return load_evidence(evidence, channels=c, size=(h, w))

    def predict(self, evidence: Evidence | str | Path | torch.Tensor, float_evidence: bool = False) -> Attribution:
        """Answers per image: attack family (or "not adversarial" / "unknown attack"), victim, strength.
        Inputs are rounded to the 8-bit grid, as the corpus stores evidence, unless float_evidence."""
        x = evidence if isinstance(evidence, torch.Tensor) else self.read(evidence).x
        if not float_evidence:
            x = torch.round(x * 255.0) / 255.0
        return attribute(self.model, self.card, x)
