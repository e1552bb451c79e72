"""MTAA: multi-task adversarial attribution (Guo, Han, Ge, Ji, Li; arXiv 2302.14059).

From an adversarial example alone, predict the attack (classification), the victim model
(classification) and the attack's hyperparameter (regression, eps*255 or kappa).

Parts (channel counts scaled down for CPUs; `width` and `pe_channels` restore the paper's):
- Perturbation extraction (PE): a frozen, pretrained backbone gives feature maps fm(x); an
  auto-encoder (encoder 2x2 conv stride 2, maxpool 2/2, 2x2 conv stride 2, maxpool 2/1; decoder
  transposed convs 3x3/2, 5x5/2, 6x6/1 as in the paper's Table 6) learns fm(x_adv) -> fm(x_adv) - fm(x).
  Training needs the clean x; inference needs only x_adv.
- Global shared layers: a ResNet trunk (stem + 3 stages).
- Task-specific layers: two copies of the last ResNet stage, one for attack + hyperparameter (with
  high-low fusion: the first stage's map pooled to the last stage's size and concatenated), one for
  the victim. `task_specific=False` (ablation) shares one last stage and drops the fusion.
- Heads: linear attack and victim classifiers; the hyperparameter regressor sees the attack
  features concatenated with the attack logits (the owner-member relation).
- Side features (optional, ours, not the paper's; see `side.py`): a pixel histogram and a probe of
  the candidate victims, embedded by a small MLP and concatenated to both branches' features; the
  regressor also gets the probe's kappa read at the predicted victim.
- Loss: homoscedastic uncertainty weighting (Kendall, Gal, Cipolla 2018) with learned s_k = log
  sigma_k^2: classification exp(-s) L + s/2, regression exp(-s) L / 2 + s/2; `weighting="sum"` is the
  plain-sum ablation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from advforensics.attribution.layers import Trunk, stage, stem
from advforensics.attribution.side import HISTOGRAM_BINS, VictimProbe, pixel_histogram
from advforensics.errors import InputValidationError

TASKS = ("attack", "victim", "hyper")
TASK_KIND = {"attack": "classification", "victim": "classification", "hyper": "regression"}


@dataclass
class MTAAConfig:
    """Architecture of an MTAA (or single-task) attributor; stored in its card."""

    n_attacks: int
    n_victims: int
    in_channels: int = 1
    image_size: int = 28
    width: int = 16
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)  # (2, 2, 2, 2) = ResNet-18 layout
    tasks: tuple[str, ...] = TASKS
    task_specific: bool = True
    use_pe: bool = True
    pe_width: int = 8  # width of the PE backbone (stem + 2 ResNet stages)
    pe_channels: tuple[int, int] = (64, 32)  # paper: (512, 256)
    weighting: str = "uncertainty"  # or "sum"
    hyper_scale: float = 100.0  # regression target / hyper_scale keeps the MSE near 1
    histogram: bool = False  # side feature: 8-bit pixel histogram
    # side feature: probe these victims (zoo architecture dicts; weights live in the state dict)
    probe_victims: list[str] = field(default_factory=list)
    probe_architectures: list[dict[str, Any]] = field(default_factory=list)
    probe_kappa_scales: list[float] = field(default_factory=list)
    # victim class (architecture) of each probed victim; empty: probed victim i is class i (older cards)
    probe_victim_classes: list[int] = field(default_factory=list)
    # the regressor answers once per attack; training reads the true attack's answer, inference the
    # predicted attack's (eps and kappa are different quantities; one output must otherwise switch)
    hyper_per_attack: bool = False

    def __post_init__(self) -> None:
        self.blocks = tuple(int(b) for b in self.blocks)  # type: ignore[assignment]
        self.tasks = tuple(self.tasks)
        self.pe_channels = tuple(int(c) for c in self.pe_channels)  # type: ignore[assignment]
        unknown = set(self.tasks) - set(TASKS)
        if not self.tasks or unknown:
            raise InputValidationError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if self.weighting not in ("uncertainty", "sum"):
            raise InputValidationError(f"weighting must be 'uncertainty' or 'sum', got {self.weighting!r}")
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise InputValidationError(f"blocks must be four positive integers, got {self.blocks}")
        if self.width < 1 or self.image_size < 4 or self.in_channels < 1:
            raise InputValidationError("width >= 1, image_size >= 4 and in_channels >= 1 are required")
        self.probe_victims = [str(v) for v in self.probe_victims]
        if not len(self.probe_victims) == len(self.probe_architectures) == len(self.probe_kappa_scales):
            raise InputValidationError("probe_victims, probe_architectures and probe_kappa_scales must have one "
                                       "entry per probed victim")
        self.probe_victim_classes = [int(c) for c in self.probe_victim_classes] or \
            list(range(len(self.probe_victims)))
        if self.probe_victims and (len(self.probe_victim_classes) != len(self.probe_victims)
                                   or max(self.probe_victim_classes) >= self.n_victims):
            raise InputValidationError(f"probed victims {self.probe_victims} must each map to one of the "
                                       f"{self.n_victims} victim classes")

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        for key in ("blocks", "tasks", "pe_channels"):
            payload[key] = list(payload[key])
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> MTAAConfig:
        try:
            return cls(**payload)
        except TypeError as error:
            raise InputValidationError(f"invalid MTAA config: {error}") from None


class PEBackbone(nn.Module):
    """Frozen feature extractor for PE: stem + two ResNet stages, pretrained as a digit classifier."""

    def __init__(self, in_channels: int, width: int, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(stem(in_channels, width), stage(width, width, 1, 1),
                                      stage(width, 2 * width, 1, 2))
        self.head = nn.Linear(2 * width, n_classes)  # only for pretraining
        self.out_channels = 2 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 2w, H/2, W/2)
        return self.features(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _pool(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Max-pool that pads maps smaller than the kernel (tiny images give 1x1 maps)."""
    pad_h, pad_w = max(0, kernel - x.shape[2]), max(0, kernel - x.shape[3])
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return F.max_pool2d(x, kernel, stride)


class PerturbationExtractor(nn.Module):
    """Auto-encoder from fm(x_adv) to the feature-level perturbation fm(x_adv) - fm(x) (Table 6)."""

    def __init__(self, c_fm: int, channels: tuple[int, int]) -> None:
        super().__init__()
        c1, c2 = channels
        self.enc1 = nn.Conv2d(c_fm, c1, 2, stride=2, padding=1)
        self.enc2 = nn.Conv2d(c1, c2, 2, stride=2, padding=1)
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 3, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(c1, c2, 5, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c2, c2, 6, stride=1, padding=1), nn.ReLU(),
        )
        self.out = nn.Conv2d(c2, c_fm, 1)
        self.feature_dim = 2 * c_fm

    def forward(self, fm_adv: torch.Tensor) -> torch.Tensor:  # (B, c_fm, h, w) -> (B, c_fm, h, w)
        z = _pool(torch.relu(self.enc1(fm_adv)), 2, 2)
        z = _pool(torch.relu(self.enc2(z)), 2, 1)
        decoded = self.dec(z)
        decoded = F.interpolate(decoded, size=fm_adv.shape[2:], mode="bilinear", align_corners=False)
        return self.out(decoded)

    @staticmethod
    def features(delta: torch.Tensor) -> torch.Tensor:
        """Global mean and mean magnitude of the extracted perturbation  # (B, 2 c_fm)"""
        return torch.cat([delta.mean(dim=(2, 3)), delta.abs().mean(dim=(2, 3))], dim=1)


class UncertaintyWeighting(nn.Module):
    """Kendall et al. 2018: total = sum_k w_k exp(-s_k) L_k + s_k / 2, w = 1 (classif.) or 1/2 (regr.).

    With learnable=False every s_k stays 0 and the total is the plain sum of the losses.
    """

    def __init__(self, tasks: tuple[str, ...], learnable: bool = True) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.learnable = learnable
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)), requires_grad=learnable)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.learnable:
            return sum((losses[t] for t in self.tasks), self.log_vars.new_zeros(()))
        total = self.log_vars.new_zeros(())
        for i, task in enumerate(self.tasks):
            s = self.log_vars[i]
            factor = 0.5 if TASK_KIND[task] == "regression" else 1.0
            total = total + factor * torch.exp(-s) * losses[task] + 0.5 * s
        return total

    def weights(self) -> dict[str, float]:
        return {t: float(torch.exp(-self.log_vars[i].detach())) for i, t in enumerate(self.tasks)}


class MTAA(nn.Module):
    """Multi-task attributor. forward(x_adv (B, C, H, W) in [0, 1]) -> dict of task outputs."""

    kind = "mtaa"

    def __init__(self, config: MTAAConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.trunk = Trunk(config.in_channels, w, config.blocks)
        c_high = 8 * w
        tasks = config.tasks
        need_attack_branch = "attack" in tasks or "hyper" in tasks
        if config.task_specific:  # one last stage per branch
            self.attack_stage = stage(4 * w, c_high, config.blocks[3], 2) if need_attack_branch else None
            self.victim_stage = stage(4 * w, c_high, config.blocks[3], 2) if "victim" in tasks else None
            self.fuse = nn.Sequential(nn.Conv2d(c_high + w, c_high, 1, bias=False), nn.BatchNorm2d(c_high),
                                      nn.ReLU()) if need_attack_branch else None
        else:  # ablation / single-task: one shared last stage, no fusion
            self.attack_stage, self.victim_stage, self.fuse = stage(4 * w, c_high, config.blocks[3], 2), None, None
        self.pe_backbone: PEBackbone | None = None
        self.pe: PerturbationExtractor | None = None
        pe_dim = 0
        if config.use_pe:
            self.pe_backbone = PEBackbone(config.in_channels, config.pe_width)
            for p in self.pe_backbone.parameters():
                p.requires_grad_(False)
            self.pe = PerturbationExtractor(self.pe_backbone.out_channels, config.pe_channels)
            pe_dim = self.pe.feature_dim
        self.probe = VictimProbe(config.probe_architectures, config.probe_kappa_scales) \
            if config.probe_victims else None
        side_in = (HISTOGRAM_BINS if config.histogram else 0) + (self.probe.n_features if self.probe else 0)
        self.side = nn.Sequential(nn.Linear(side_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()) if side_in \
            else None
        # the probe's kappa at the predicted victim needs a victim head to predict it
        self.read_probe_kappa = self.probe is not None and "victim" in tasks
        feat = c_high + pe_dim + (64 if self.side is not None else 0)
        self.attack_head = nn.Linear(feat, config.n_attacks) if "attack" in tasks else None
        self.victim_head = nn.Linear(feat, config.n_victims) if "victim" in tasks else None
        hyper_in = feat + (config.n_attacks if "attack" in tasks else 0) + (1 if self.read_probe_kappa else 0)
        self.per_attack = config.hyper_per_attack and "attack" in tasks
        hyper_out = config.n_attacks if self.per_attack else 1
        self.hyper_head = nn.Sequential(nn.Linear(hyper_in, 64), nn.ReLU(), nn.Linear(64, hyper_out)) \
            if "hyper" in tasks else None
        self.weighting = UncertaintyWeighting(tasks, learnable=config.weighting == "uncertainty")

    def train(self, mode: bool = True) -> MTAA:
        super().train(mode)
        if self.pe_backbone is not None:
            self.pe_backbone.eval()  # frozen: BN statistics stay those of pretraining
        return self

    @torch.no_grad()
    def side_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The side features' raw inputs: "raw" (B, D) and, with a probe, "probe_kappa" (B, V); {} without.

        Deterministic in x, so training computes them once and hands them to `forward`.
        """
        parts, out = [], {}
        if self.config.histogram:
            parts.append(pixel_histogram(x))
        if self.probe is not None:
            features, kappa = self.probe(x.float())
            parts.append(features.flatten(1))
            out["probe_kappa"] = kappa
        if parts:
            out["raw"] = torch.cat(parts, dim=1)
        return out

    def forward(self, x: torch.Tensor, side: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """side: `side_inputs(x)`, when already computed."""
        x = x.float()
        if self.side is not None and side is None:
            side = self.side_inputs(x)
        low, high = self.trunk(x)  # (B, w, H, W), (B, 4w, H/4, W/4)
        out: dict[str, torch.Tensor] = {}
        pe_feat = None
        if self.pe is not None and self.pe_backbone is not None:
            with torch.no_grad():
                fm_adv = self.pe_backbone(x)  # (B, c_fm, H/2, W/2)
            delta = self.pe(fm_adv)
            out["pe_delta"] = delta
            pe_feat = self.pe.features(delta)  # (B, 2 c_fm)
        cfg = self.config
        attack_feat = victim_feat = None
        if self.attack_stage is not None:
            a = self.attack_stage(high)  # (B, 8w, H/8, W/8)
            if self.fuse is not None:
                a = self.fuse(torch.cat([a, F.adaptive_avg_pool2d(low, a.shape[2:])], dim=1))  # high-low fusion
            attack_feat = a.mean(dim=(2, 3))  # (B, 8w)
            if not cfg.task_specific:
                victim_feat = attack_feat
        if self.victim_stage is not None:
            victim_feat = self.victim_stage(high).mean(dim=(2, 3))
        extra = [f for f in (pe_feat, None if self.side is None else self.side(side["raw"])) if f is not None]
        if extra:
            attack_feat = None if attack_feat is None else torch.cat([attack_feat, *extra], dim=1)
            victim_feat = None if victim_feat is None else torch.cat([victim_feat, *extra], dim=1)
        if self.attack_head is not None:
            out["attack_features"] = attack_feat  # (B, F): what the open-set rule measures distances in
            out["attack_logits"] = self.attack_head(attack_feat)  # (B, n_attacks)
        if self.victim_head is not None:
            out["victim_logits"] = self.victim_head(victim_feat)  # (B, n_victims)
        if self.hyper_head is not None:
            inputs = attack_feat if self.attack_head is None else torch.cat([attack_feat, out["attack_logits"]], dim=1)
            if self.read_probe_kappa:
                inputs = torch.cat([inputs, self._probe_kappa_at_victim(out["victim_logits"], side["probe_kappa"])],
                                   dim=1)
            hyper = self.hyper_head(inputs)  # (B, 1) or (B, n_attacks), in hyper / hyper_scale units
            if self.per_attack:
                out["hyper_per_attack"] = hyper
                hyper = hyper.gather(1, out["attack_logits"].argmax(1, keepdim=True))
            out["hyper_norm"] = hyper.squeeze(1)  # (B,)
            out["hyper"] = out["hyper_norm"] * cfg.hyper_scale
        return out

    def _probe_kappa_at_victim(self, victim_logits: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """sum_v p(class of v) kappa_v / (probed victims of that class) / 100  # (B, 1)

        The probe's kappa read at the predicted victim architecture, averaged over its probed models.
        """
        classes = torch.tensor(self.config.probe_victim_classes, device=victim_logits.device)
        counts = torch.bincount(classes, minlength=victim_logits.shape[1]).clamp_min(1)
        p = victim_logits.detach().softmax(dim=1)[:, classes] / counts[classes]  # (B, V_probe)
        return ((p * kappa).sum(dim=1, keepdim=True) / 100).clamp(-10, 10)

    def losses(self, out: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               fm_delta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-task losses; `fm_delta` = fm(x_adv) - fm(x) adds the PE reconstruction loss."""
        losses: dict[str, torch.Tensor] = {}
        if "attack_logits" in out:
            losses["attack"] = F.cross_entropy(out["attack_logits"], targets["attack"])
        if "victim_logits" in out:
            losses["victim"] = F.cross_entropy(out["victim_logits"], targets["victim"])
        if "hyper_per_attack" in out:  # the true attack's answer
            chosen = out["hyper_per_attack"].gather(1, targets["attack"].unsqueeze(1)).squeeze(1)
            losses["hyper"] = F.mse_loss(chosen, targets["hyper"] / self.config.hyper_scale)
        elif "hyper_norm" in out:
            losses["hyper"] = F.mse_loss(out["hyper_norm"], targets["hyper"] / self.config.hyper_scale)
        if fm_delta is not None and "pe_delta" in out:
            losses["pe"] = F.mse_loss(out["pe_delta"], fm_delta)
        return losses

    def total_loss(self, losses: dict[str, torch.Tensor], pe_weight: float = 1.0) -> torch.Tensor:
        total = self.weighting({t: losses[t] for t in self.config.tasks})
        if "pe" in losses:
            total = total + pe_weight * losses["pe"]
        return total

    def feature_delta(self, x_adv: torch.Tensor, x_clean: torch.Tensor) -> torch.Tensor | None:
        """PE target fm(x_adv) - fm(x)  # (B, c_fm, H/2, W/2); None without PE."""
        if self.pe_backbone is None:
            return None
        with torch.no_grad():
            return self.pe_backbone(x_adv.float()) - self.pe_backbone(x_clean.float())


__all__ = ["MTAA", "MTAAConfig", "PEBackbone", "PerturbationExtractor", "UncertaintyWeighting", "TASKS"]
