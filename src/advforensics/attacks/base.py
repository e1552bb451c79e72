"""The attack contract: construct with hyperparameters, call with (model, x, y), get an AttackResult.

The base class validates inputs once, puts the model in eval mode, runs the attack without
touching the model's parameters, and measures success, norms and queries the same way for every
attack, so each attack file holds only its algorithm (torchattacks/ART habit).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.registry import Registry
from advforensics.utils import check_images, check_labels
from advforensics.vocab import Norm, ThreatModel  # defined torch-free; re-exported here and by attacks/


@dataclass
class AttackResult:
    """What one attack call returns. Every tensor's first dimension is the batch B."""

    x_adv: torch.Tensor  # (B, C, H, W) in [0, 1]
    success: torch.Tensor  # (B,) bool: model(x_adv).argmax != y
    l2: torch.Tensor  # (B,) float: ||x_adv - x||_2
    linf: torch.Tensor  # (B,) float: ||x_adv - x||_inf
    queries: torch.Tensor  # (B,) int64: model evaluations (forward or forward+backward) per example
    predicted: torch.Tensor  # (B,) int64: model(x_adv).argmax
    params: dict[str, Any]  # the attack's name and every hyperparameter, defaults included
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # attack-specific per-example data

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean()) if self.success.numel() else 0.0

    def summary(self) -> dict[str, Any]:
        ok = self.success
        return {
            "params": self.params,
            "n": int(ok.numel()),
            "success_rate": self.success_rate,
            "median_l2_success": float(self.l2[ok].median()) if ok.any() else None,
            "median_linf_success": float(self.linf[ok].median()) if ok.any() else None,
            "mean_queries": float(self.queries.float().mean()) if ok.numel() else None,
        }


class Attack(ABC):
    """Base class. Subclasses set `name`, `norm`, `threat_model` and implement `_run`.

    Subclass __init__ takes keyword hyperparameters with defaults, stores them, and calls
    `self._check_params()` (override it) so that bad values fail at construction with a
    ValueError naming the argument.
    """

    name: ClassVar[str]
    norm: ClassVar[Norm]
    threat_model: ClassVar[ThreatModel]

    def __init__(self, **params: Any) -> None:
        self._params = dict(params)
        self._check_params()

    def _check_params(self) -> None:
        """Validate self._params; raise InputValidationError naming the argument."""

    @property
    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "norm": self.norm.value, "threat_model": self.threat_model.value,
                **self._params}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        check_images(x, "x")
        check_labels(y, x.shape[0])
        was_training = model.training
        model.eval()
        try:
            x_adv, queries, extras = self._run(model, x.detach(), y.detach())
            x_adv = x_adv.detach().clamp(0.0, 1.0)
            with torch.no_grad():
                predicted = batched_predict(model, x_adv)
        finally:
            model.train(was_training)
        delta = (x_adv - x).flatten(1)
        return AttackResult(
            x_adv=x_adv,
            success=predicted != y,
            l2=delta.norm(p=2, dim=1),
            linf=delta.abs().amax(dim=1) if delta.numel() else delta.sum(dim=1),
            queries=queries.to(torch.int64),
            predicted=predicted,
            params=self.params,
            extras=extras,
        )

    @abstractmethod
    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Return (x_adv (B,C,H,W), queries (B,), extras)."""


def batched_predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """argmax labels of `model` on `x`, in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(batch_size)]) if len(x) else \
            torch.empty(0, dtype=torch.int64)


def require(condition: bool, argument: str, message: str) -> None:
    """Parameter check helper: raise InputValidationError naming the argument."""
    if not condition:
        raise InputValidationError(f"{argument}: {message}")


ATTACKS: Registry[type[Attack]] = Registry("attack")


def create_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack by name; unknown names, unknown keys and NaN values fail clearly."""
    cls = ATTACKS.get(name)
    signature = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    unknown = sorted(set(params) - set(signature))
    if unknown:
        raise InputValidationError(f"{name} has no parameter {', '.join(map(repr, unknown))}; its parameters are "
                                   f"{', '.join(signature)}")
    for key, value in params.items():  # inf is a value only where it is the default (an unbounded budget)
        if isinstance(value, float) and not math.isfinite(value) and value != signature[key]:
            raise InputValidationError(f"{name}: {key} must be a finite number, got {value}")
    return cls(**params)


def list_attacks() -> list[str]:
    return ATTACKS.names()
