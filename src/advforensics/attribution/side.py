"""Forensic side features: what the evidence gives away beyond a CNN's view (not in the MTAA paper).

Two optional inputs for an attributor's heads, both computed from the adversarial example alone:

- Pixel histogram: the fraction of pixels at each 8-bit value, (B, 256). FGSM moves every pixel by
  exactly +-eps, so where the clean image sits at 0 or 1 (MNIST's background) the histogram spikes
  at eps; PGD's iterates spread the mass over [0, eps]. A CNN with batch norm reads exact pixel values
  poorly; a histogram hands them over.
- Victim probe: the investigator holds the candidate victims (the ones the corpus was made on) and
  queries each of them. For victim v, with top class t_v:
    consensus label y_v = the most probable class under the other victims' summed softmax, t_v excluded
      (a C&W example rarely transfers, so the other victims still see the true digit);
    margin_v = logit_v[t_v] - logit_v[y_v], which C&W drives to kappa * kappa_scale_v on its victim;
    kappa_v = margin_v / kappa_scale_v, in the grid's kappa units;
    fooled_v = t_v differs from the other victims' most probable class (t_v not excluded); on the
      session-4 MNIST corpus only the true victim is fooled for 91% of C&W examples;
    and v's top softmax probability.
  The attributor's hyperparameter head also gets sum_v p(victim = v) kappa_v, the probe's kappa read
  at the victim it predicts.

The victims' weights are part of the attributor's state (its file carries them), so `predict` needs
nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from advforensics.errors import InputValidationError

HISTOGRAM_BINS = 256
PROBE_FEATURES = 4  # margin / 10, kappa / 100, fooled, top probability


def pixel_histogram(x: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels at each 8-bit value, square-rooted so that small spikes count  # (B, 256)"""
    values = (x.detach().float().clamp(0, 1) * 255).round().long().flatten(1)  # (B, P)
    offsets = torch.arange(values.shape[0], device=values.device).unsqueeze(1) * HISTOGRAM_BINS
    counts = torch.bincount((values + offsets).flatten(), minlength=values.shape[0] * HISTOGRAM_BINS)
    return (counts.view(-1, HISTOGRAM_BINS).float() / values.shape[1]).sqrt()


class VictimProbe(nn.Module):
    """Frozen candidate victims; forward(x) -> (features (B, V, 4), kappa (B, V))."""

    def __init__(self, architectures: Sequence[Mapping[str, Any]], kappa_scales: Sequence[float]) -> None:
        super().__init__()
        from advforensics.models.base import ModelConfig, build_model

        if not architectures or len(architectures) != len(kappa_scales):
            raise InputValidationError("a victim probe needs one kappa scale per victim, and at least one victim")
        if min(kappa_scales) <= 0:
            raise InputValidationError(f"kappa scales must be positive, got {list(kappa_scales)}")
        self.models = nn.ModuleList(build_model(ModelConfig.from_dict(dict(a))) for a in architectures)
        for p in self.models.parameters():
            p.requires_grad_(False)
        self.register_buffer("kappa_scales", torch.tensor([float(s) for s in kappa_scales]), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> VictimProbe:
        return super().train(False)  # frozen: the victims answer as they did when the corpus was made

    def copy_weights(self, models: Mapping[str, nn.Module], names: Sequence[str]) -> None:
        """Load each named victim's weights into its slot (slot i holds names[i])."""
        for slot, name in zip(self.models, names, strict=True):
            slot.load_state_dict(models[name].state_dict())

    @property
    def n_features(self) -> int:
        return len(self.models) * PROBE_FEATURES

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.stack([m(x.float()) for m in self.models], dim=1)  # (B, V, K)
        probs = logits.softmax(dim=2)
        top = logits.argmax(dim=2)  # (B, V)
        total = probs.sum(dim=1, keepdim=True)  # (B, 1, K)
        n_victims = logits.shape[1]
        others = total - probs if n_victims > 1 else probs  # one victim: its own runner-up
        fooled = top != others.argmax(dim=2) if n_victims > 1 else torch.zeros_like(top, dtype=torch.bool)
        consensus = others.scatter(2, top.unsqueeze(2), -1.0).argmax(dim=2)  # (B, V); t_v excluded
        margin = logits.gather(2, top.unsqueeze(2)).squeeze(2) - logits.gather(2, consensus.unsqueeze(2)).squeeze(2)
        kappa = margin / self.kappa_scales  # (B, V)
        features = torch.stack([margin / 10, kappa / 100, fooled.float(), probs.amax(dim=2)], dim=2)
        return features, kappa


__all__ = ["pixel_histogram", "VictimProbe", "HISTOGRAM_BINS", "PROBE_FEATURES"]
