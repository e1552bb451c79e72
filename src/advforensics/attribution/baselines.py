"""Baselines for MTAA: single-label classifiers over joined labels, and single-task models.

Single-label (Dotter et al. 2021; the paper's pre-experiment): one class per (attack, victim) or per
(attack, victim, hyperparameter) seen in training, on the same ResNet backbone as MTAA. Its output is
turned into the MTAA output format: attack and victim logits are log marginal probabilities of the
joint softmax, and the hyperparameter is that of the most probable joint class (NaN without one).

Single-task models are MTAA configurations with one task, one shared last stage and no PE
(`single_task_config`); the ablations (plain loss sum, no task-specific layers, no PE) are MTAA
configurations too (`ablation_config`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from advforensics.attribution.layers import Trunk, stage
from advforensics.attribution.mtaa import MTAAConfig
from advforensics.errors import InputValidationError

LABEL_MODES = ("attack+victim", "attack+victim+hyper")


@dataclass
class SingleLabelConfig:
    """Backbone and joint-label vocabulary of a single-label classifier (stored in its card)."""

    joint_labels: list[tuple[int, int, float]]  # (attack id, victim id, hyper) per joint class
    n_attacks: int
    n_victims: int
    label_mode: str = "attack+victim+hyper"
    in_channels: int = 1
    image_size: int = 28
    width: int = 16
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)

    def __post_init__(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise InputValidationError(f"label_mode must be one of {LABEL_MODES}, got {self.label_mode!r}")
        self.joint_labels = [(int(a), int(v), float(h)) for a, v, h in self.joint_labels]
        self.blocks = tuple(int(b) for b in self.blocks)  # type: ignore[assignment]
        if not self.joint_labels:
            raise InputValidationError("a single-label classifier needs at least one joint class")

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["joint_labels"] = [list(j) for j in self.joint_labels]
        payload["blocks"] = list(self.blocks)
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SingleLabelConfig:
        try:
            return cls(**payload)
        except TypeError as error:
            raise InputValidationError(f"invalid single-label config: {error}") from None


def joint_vocabulary(attack: torch.Tensor, victim: torch.Tensor, hyper: torch.Tensor, label_mode: str
                     ) -> list[tuple[int, int, float]]:
    """Sorted distinct joint labels in training targets (hyper is 0 in attack+victim mode)."""
    if label_mode not in LABEL_MODES:
        raise InputValidationError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
    use_hyper = label_mode == "attack+victim+hyper"
    keys = {(int(a), int(v), float(h) if use_hyper else 0.0) for a, v, h in zip(attack.tolist(), victim.tolist(),
                                                                             hyper.tolist())}
    return sorted(keys)


class SingleLabelNet(nn.Module):
    """ResNet trunk + last stage + one linear classifier over joint labels."""

    kind = "single-label"

    def __init__(self, config: SingleLabelConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.trunk = Trunk(config.in_channels, w, config.blocks)
        self.last = stage(4 * w, 8 * w, config.blocks[3], 2)
        self.head = nn.Linear(8 * w, len(config.joint_labels))
        joint = torch.tensor(config.joint_labels, dtype=torch.float32)  # (J, 3)
        self.register_buffer("joint_attack", F.one_hot(joint[:, 0].long(), config.n_attacks).float(), persistent=False)
        self.register_buffer("joint_victim", F.one_hot(joint[:, 1].long(), config.n_victims).float(), persistent=False)
        self.register_buffer("joint_hyper", joint[:, 2].clone(), persistent=False)
        self._lookup = {key: i for i, key in enumerate(config.joint_labels)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, high = self.trunk(x.float())
        logits = self.head(self.last(high).mean(dim=(2, 3)))  # (B, J)
        probs = logits.softmax(dim=1)
        out = {"joint_logits": logits,
               "attack_logits": torch.log(probs @ self.joint_attack + 1e-12),  # (B, n_attacks)
               "victim_logits": torch.log(probs @ self.joint_victim + 1e-12)}  # (B, n_victims)
        if self.config.label_mode == "attack+victim+hyper":
            out["hyper"] = self.joint_hyper[logits.argmax(dim=1)]
        return out

    def joint_targets(self, attack: torch.Tensor, victim: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """Joint class index per example; -100 (ignored by cross-entropy) for unseen combinations."""
        use_hyper = self.config.label_mode == "attack+victim+hyper"
        return torch.tensor([self._lookup.get((a, v, float(h) if use_hyper else 0.0), -100)
                             for a, v, h in zip(attack.tolist(), victim.tolist(), hyper.tolist())],
                            dtype=torch.int64, device=attack.device)

    def losses(self, out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               fm_delta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        joint = self.joint_targets(targets["attack"], targets["victim"], targets["hyper"])
        return {"joint": F.cross_entropy(out["joint_logits"], joint, ignore_index=-100)}

    def total_loss(self, losses: dict[str, torch.Tensor], pe_weight: float = 1.0) -> torch.Tensor:
        return losses["joint"]

    def feature_delta(self, x_adv: torch.Tensor, x_clean: torch.Tensor) -> None:
        return None


def single_task_config(base: MTAAConfig, task: str) -> MTAAConfig:
    """The single-task baseline for `task`: same backbone, one head, no task-specific layers, no PE."""
    return replace(base, tasks=(task,), task_specific=False, use_pe=False, weighting="sum")


ABLATIONS = {
    "plain-sum": {"weighting": "sum", "task_specific": False, "use_pe": False},
    "uncertainty": {"weighting": "uncertainty", "task_specific": False, "use_pe": False},
    "uncertainty+tsl": {"weighting": "uncertainty", "task_specific": True, "use_pe": False},
    "full": {"weighting": "uncertainty", "task_specific": True, "use_pe": True},
}


def ablation_config(base: MTAAConfig, name: str) -> MTAAConfig:
    """The paper's ablation ladder (Table 13): plain-sum, uncertainty, uncertainty+tsl, full (+PE)."""
    if name not in ABLATIONS:
        raise InputValidationError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
    return replace(base, **ABLATIONS[name])


__all__ = ["SingleLabelConfig", "SingleLabelNet", "joint_vocabulary", "single_task_config", "ablation_config",
           "ABLATIONS", "LABEL_MODES"]
