"""Training attributors (MTAA, single-task, single-label) on a corpus.

Defaults follow the paper: Adam, cosine annealing, lr 1e-3, weight decay 1e-3, batch 64. The split
is by clean image (`split_by_clean_image`) and is reproduced from the card at evaluation. The trained
network and its card are stored by attribution/card.py.

Under torchrun the ranks train one model as DistributedDataParallel: every rank draws the same batch
order (the balanced sampler draws with replacement by weight, which DistributedSampler cannot) and
trains on its share of each batch, so a step sees the same rows as in one process.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from advforensics import distributed
from advforensics.attribution.card import MODEL_KINDS, AttributorCard, AttributorNet, CardSplit
from advforensics.attribution.baselines import SingleLabelConfig, SingleLabelNet, joint_vocabulary, \
    single_task_config
from advforensics.attribution.corpus import Corpus, attribution_splits, victim_architectures
from advforensics.attribution.grid import CLEAN
from advforensics.attribution.mtaa import MTAA, TASKS, MTAAConfig
from advforensics.attribution.openset import OpenSetRule, fit_open_set
from advforensics.attribution.side import HISTOGRAM_BINS, PROBE_FEATURES
from advforensics.attribution.victims import probe_settings
from advforensics.errors import CheckpointError, InputValidationError
from advforensics.evidence.transforms import reencode
from advforensics.models.serialization import load_state, save_state, state_exists
from advforensics.utils import check_images, check_labels, resolve_device, seed_everything

log = logging.getLogger(__name__)



#: Below this train accuracy the PE backbone counts as untrained (a warning says so).
WEAK_BACKBONE = 0.5


@dataclass
class TrainConfig:
    """How an attributor is trained (stored in its card).

    model: "mtaa" | "single-task" (needs `task`) | "single-label" (uses `label_mode`).
    ablation flags (MTAA): weighting "uncertainty"|"sum", task_specific, use_pe.
    shuffle_labels: the control -- targets permuted across training examples (accuracy must fall
        to chance if the model learns from the images and nothing else).
    histogram, probe: side features (ours, see side.py) for MTAA and single-task models: the 8-bit pixel
        histogram, and a probe of the corpus's victims (train_attributor's `probe_victims`).
    hyper_per_attack: one regressor output per attack, trained on the true attack's and read at the
        predicted attack's.
    balance: draw each epoch's examples with replacement, weighted 1 / (size of their attack x victim
        class), so that a small class (the clean false-alarm class) is seen as often as the others.
    calibration_fraction: share of the training clean images held out to calibrate the open-set rule
        (temperatures, "unknown attack" threshold; openset.py) at `target_false_abstention`. 0: none.
    open_set_score: which abstention score the card's rule answers with ("msp", "distance", "either");
        every threshold is fitted either way.
    target_clean_recall: the share of calibration clean (and benign) rows that must read "not
        adversarial": the rule then answers so whenever p(clean) reaches the fitted threshold.
    augment: re-encodings (`evidence.reencode` specs, e.g. "jpeg:75") of which each batch sees
        `augment_share` of its rows instead of the stored evidence, labels unchanged.
    probe_siblings: in training, a row's own victim's probe slot shows another probed model of the same
        architecture instead (`_hide_own_victim`): the evidence an investigator meets comes from
        victims whose weights they do not hold.
    """

    model: str = "mtaa"
    task: str | None = None
    label_mode: str = "attack+victim+hyper"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    width: int = 16
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)
    weighting: str = "uncertainty"
    task_specific: bool = True
    use_pe: bool = True
    pe_width: int = 8
    pe_channels: tuple[int, int] = (64, 32)
    pe_weight: float = 1.0
    backbone_epochs: int = 3
    test_fraction: float = 0.2
    calibration_fraction: float = 0.1
    target_false_abstention: float = 0.03
    open_set_score: str = "msp"
    target_clean_recall: float | None = None
    augment: tuple[str, ...] = ()
    augment_share: float = 0.3
    probe_siblings: bool = False
    seed: int = 0
    shuffle_labels: bool = False
    balance: bool = False
    histogram: bool = False
    probe: bool = False
    hyper_per_attack: bool = False
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.model not in MODEL_KINDS:
            raise InputValidationError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        if self.model == "single-task" and self.task not in TASKS:
            raise InputValidationError(f"a single-task model needs task in {TASKS}, got {self.task!r}")
        for name in ("epochs", "batch_size", "width"):
            if int(getattr(self, name)) < 1:
                raise InputValidationError(f"{name} must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise InputValidationError("lr must be > 0 and weight_decay >= 0")
        self.blocks = tuple(int(b) for b in self.blocks)  # type: ignore[assignment]
        self.pe_channels = tuple(int(c) for c in self.pe_channels)  # type: ignore[assignment]
        self.augment = tuple(self.augment)
        if self.augment:
            from advforensics.evidence.transforms import check_reencoding

            for spec in self.augment:
                check_reencoding(spec)
        if not 0.0 <= self.augment_share <= 1.0:
            raise InputValidationError(f"augment_share must be in [0, 1], got {self.augment_share}")
        if self.model == "single-label" and (self.histogram or self.probe):
            raise InputValidationError("side features (histogram, probe) are for mtaa and single-task models")


@dataclass
class TrainResult:
    model: AttributorNet
    card: AttributorCard
    history: list[dict[str, float]] = field(default_factory=list)


def corpus_targets(corpus: Corpus) -> dict[str, torch.Tensor]:
    """attack (M,), victim (M,) int64 and hyper (M,) float32 targets of every corpus row."""
    return {"attack": torch.from_numpy(corpus.attack_targets()), "victim": torch.from_numpy(corpus.victim_targets()),
            "hyper": torch.from_numpy(corpus.hyper_targets())}


def load_backbone_data(name: str, data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A data set's training split as `train_attributor`'s backbone_data: (images, labels, description)."""
    from advforensics.data import load_dataset

    data = load_dataset(name, split="train", data_dir=data_dir)
    return data.images, data.labels, f"{name} train split ({len(data.images)} images)"


def _pretrain_pe_backbone(model: MTAA, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int,
                          generator: torch.Generator, device: torch.device) -> float:
    """Train the PE backbone as a classifier on clean images, then freeze it; returns train accuracy."""
    backbone = model.pe_backbone
    assert backbone is not None
    for p in backbone.parameters():
        p.requires_grad_(True)
    backbone.train()
    optimiser = torch.optim.Adam(backbone.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            optimiser.zero_grad()
            F.cross_entropy(backbone.classify(images[batch].to(device)), labels[batch].to(device)).backward()
            optimiser.step()
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        predicted = torch.cat([backbone.classify(chunk.to(device)).argmax(1).cpu() for chunk in images.split(1024)])
        return float((predicted == labels).float().mean())


def train_attributor(corpus: Corpus, config: TrainConfig | None = None, *, progress: bool = True,
                     device: str | torch.device = "cpu",
                     backbone_data: tuple[torch.Tensor, torch.Tensor, str] | None = None,
                     probe_victims: tuple[Mapping[str, nn.Module], Mapping[str, Mapping[str, Any]]] | None = None,
                     checkpoint_path: Path | None = None) -> TrainResult:
    """Train an attributor on the training split of `corpus` (split by clean image).

    device: where the model trains ("auto", "cpu", "cuda"); the data stay on the CPU and travel a
        batch at a time. The returned model is on that device.
    backbone_data: (images (N, C, H, W) in [0, 1], labels (N,), description) to pretrain MTAA's PE
        backbone on, in the role of the paper's ImageNet-pretrained extractor. Without it the
        backbone learns from the corpus's training clean images, which are few in a small corpus.
    probe_victims: (models, info) from `victims.load_victims`, for `config.probe`: exactly the
        corpus's victims, with the weights the corpus recorded.
    checkpoint_path: a training state is written there (`<path>.safetensors`, models.serialization)
        after every epoch, and one of the same corpus, config and number of ranks is resumed: in one
        process, to the weights of an uninterrupted run.
    """
    config = config or TrainConfig()
    device = resolve_device(device)
    if not corpus.manifest.get("complete"):
        raise InputValidationError("cannot train on an incomplete corpus")
    generator = seed_everything(config.seed)
    ranks = distributed.current()
    identity = {"train": _config_dict(config), "corpus_id": corpus.corpus_id, "subset": corpus.manifest.get("subset"),
                **({"ranks": ranks.world_size} if ranks.distributed else {})}
    resumed = load_state(checkpoint_path) if checkpoint_path is not None and state_exists(checkpoint_path) else None
    if resumed is not None and resumed.get("identity") != json.loads(json.dumps(identity, default=str)):
        raise CheckpointError(f"training state {checkpoint_path} belongs to another corpus, training config or "
                              "number of ranks; remove it or choose another --out")
    train_mask, calibration_mask, _ = attribution_splits(corpus.columns["clean_index"], config.test_fraction,
                                                         config.calibration_fraction, config.seed)
    rows = np.flatnonzero(train_mask)
    if len(rows) == 0:
        raise InputValidationError("the corpus has no training examples")
    targets = {k: v[rows] for k, v in corpus_targets(corpus).items()}
    if config.shuffle_labels:
        perm = torch.randperm(len(rows), generator=generator)
        targets = {k: v[perm] for k, v in targets.items()}
    c, h, w = corpus.image_shape
    if h != w:
        raise InputValidationError(f"square images are required, got {h}x{w}")
    n_attacks, n_victims = len(corpus.attack_names), len(corpus.victim_names)
    if config.model == "single-label":
        model: AttributorNet = SingleLabelNet(SingleLabelConfig(
            joint_labels=joint_vocabulary(targets["attack"], targets["victim"], targets["hyper"], config.label_mode),
            n_attacks=n_attacks, n_victims=n_victims, label_mode=config.label_mode, in_channels=c, image_size=h,
            width=config.width, blocks=config.blocks))
    else:
        probe: dict[str, Any] = {}
        if config.probe:
            if probe_victims is None:
                raise InputValidationError("a probe needs the corpus's victim models (probe_victims)")
            probe = probe_settings(corpus.manifest, *probe_victims)
            arch = victim_architectures(corpus.manifest)
            probe["probe_victim_classes"] = [corpus.victim_names.index(arch[v]) for v in probe["probe_victims"]]
        base = MTAAConfig(n_attacks=n_attacks, n_victims=n_victims, in_channels=c, image_size=h, width=config.width,
                          blocks=config.blocks, task_specific=config.task_specific, use_pe=config.use_pe,
                          pe_width=config.pe_width, pe_channels=config.pe_channels, weighting=config.weighting,
                          histogram=config.histogram, hyper_per_attack=config.hyper_per_attack, **probe)
        model = MTAA(single_task_config(base, config.task) if config.model == "single-task" else base)
        if model.probe is not None:
            assert probe_victims is not None  # config.probe demanded them above
            model.probe.copy_weights(probe_victims[0], model.config.probe_victims)
    model.to(device)
    x_train = corpus.float_images(rows)  # (M, C, H, W)
    backbone_acc = None
    if isinstance(model, MTAA) and model.pe_backbone is not None:
        if backbone_data is None:
            pos = np.unique(corpus.columns["clean_pos"][rows])
            clean_x = torch.from_numpy(corpus.clean_images[pos]).float() / 255.0
            clean_y = torch.from_numpy(corpus.clean_labels[pos]).long()
            backbone_source = f"the corpus's {len(pos)} training clean images"
        else:
            clean_x, clean_y, backbone_source = backbone_data
            check_images(clean_x, "backbone images", channels=c, size=(h, w))
            check_labels(clean_y, clean_x.shape[0])
        backbone_acc = resumed["backbone_accuracy"] if resumed is not None else \
            _pretrain_pe_backbone(model, clean_x, clean_y.long(), config.backbone_epochs, config.batch_size,
                                  generator, device)  # a resumed run's backbone comes with its weights
        if backbone_acc < WEAK_BACKBONE:
            log.warning("the PE backbone reached only %.1f%% train accuracy on %s: its feature maps carry "
                        "little, so perturbation extraction adds cost and no signal; pretrain it on a labelled "
                        "set (--backbone-data) or raise --backbone-epochs", 100 * backbone_acc, backbone_source)
        clean_train = corpus.float_clean(rows)
    else:
        clean_train, backbone_source = None, None
    side_train = _side_inputs(model, x_train, device) if isinstance(model, MTAA) else {}
    # re-encoded copies of every training row (evidence arrives as PNG, JPEG, resized): each batch
    # swaps a share of its rows for one of them, label unchanged
    copies = [reencode(x_train, spec, seed=config.seed) for spec in config.augment]
    side_copies = [_side_inputs(model, c, device) if isinstance(model, MTAA) else {} for c in copies]
    if config.probe_siblings and isinstance(model, MTAA) and model.probe is not None:
        victims = corpus.columns["victim"][rows]
        for side in (side_train, *side_copies):
            _hide_own_victim(side, model.config, victims)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("weighting.")]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("weighting.")]
    optimiser = torch.optim.Adam([{"params": decay, "weight_decay": config.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, total_steps))
    history: list[dict[str, float]] = []
    step, start_epoch = 0, 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimiser.load_state_dict(resumed["optimiser"])
        scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["rng"]["generator"])
        torch.set_rng_state(resumed["rng"]["torch"])
        step, start_epoch, history = int(resumed["step"]), int(resumed["epoch"]), list(resumed["history"])
        log.info("resuming %s from epoch %d (step %d)", checkpoint_path, start_epoch, step)
    bar = tqdm(total=total_steps, initial=step, desc=f"train {config.model}",
               disable=not (progress and ranks.is_main), unit="step")
    model.train()
    step_loss = _StepLoss(model, config.pe_weight)
    if ranks.distributed:  # the same parameters take part in every step (some may never: found at step 1)
        step_loss = nn.parallel.DistributedDataParallel(step_loss, static_graph=True)
    sample_weights = _balance_weights(targets) if config.balance else None
    for epoch in range(start_epoch, config.epochs):
        if step >= total_steps:
            break
        sums: dict[str, float] = {}
        count = 0
        order = torch.randperm(len(rows), generator=generator) if sample_weights is None else \
            torch.multinomial(sample_weights, len(rows), replacement=True, generator=generator)
        for batch in order.split(config.batch_size):
            if step >= total_steps:
                break
            if len(batch) < ranks.world_size:  # a last batch too small to give every rank a row
                continue
            share = slice(ranks.rank, None, ranks.world_size)  # this rank's share of the step's batch
            if copies:  # drawn for the whole batch, so that every rank's generator stays in step
                swap = (torch.rand(len(batch), generator=generator) < config.augment_share)[share]
                which = torch.randint(len(copies), (len(batch),), generator=generator)[share]
            batch = batch[share]
            xb = x_train[batch]
            side_b = {k: v[batch] for k, v in side_train.items()}
            if copies:
                for j, copy in enumerate(copies):
                    m = swap & (which == j)
                    xb = torch.where(m.view(-1, 1, 1, 1), copy[batch], xb)
                    side_b = {k: torch.where(m.view(-1, *([1] * (v.dim() - 1))), side_copies[j][k][batch], v)
                              for k, v in side_b.items()}
            xb = xb.to(device)
            tb = {k: v[batch].to(device) for k, v in targets.items()}
            clean_b = clean_train[batch].to(device) if clean_train is not None else None
            loss, losses = step_loss(xb, {k: v.to(device) for k, v in side_b.items()}, tb, clean_b)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            step += 1
            bar.update(1)
            count += 1  # the epoch's means below are rank 0's share (the ranks' losses agree to noise)
            sums["total"] = sums.get("total", 0.0) + float(loss.detach())
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        if count:
            record = {"epoch": epoch + 1, **{k: v / count for k, v in sums.items()}}
            if isinstance(model, MTAA):
                record.update({f"weight_{k}": v for k, v in model.weighting.weights().items()})
            history.append(record)
            log.info("epoch %d: %s", epoch + 1, record)
        if checkpoint_path is not None and ranks.is_main:
            save_state(checkpoint_path, {
                "identity": identity, "epoch": epoch + 1, "step": step, "history": history,
                "backbone_accuracy": backbone_acc, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()}})
    bar.close()
    model.eval()
    open_set = _fit_open_set(model, corpus, np.flatnonzero(calibration_mask), rows, config) \
        if calibration_mask.any() and config.model != "single-label" else None
    card = AttributorCard(
        kind=config.model, config=model.config.to_dict(), attack_names=corpus.attack_names,
        victim_names=corpus.victim_names, image_shape=tuple(corpus.image_shape), corpus_id=corpus.corpus_id,
        subset=corpus.manifest.get("subset"), train_device=str(device),
        hyper_units={a.name: a.unit for a in corpus.grid.attacks},
        split=CardSplit(test_fraction=config.test_fraction, calibration_fraction=config.calibration_fraction,
                        seed=config.seed),
        open_set=None if open_set is None else open_set.to_dict(), n_calibration=int(calibration_mask.sum()),
        train=_config_dict(config), n_train=int(len(rows)), steps=step, pe_backbone_train_accuracy=backbone_acc,
        pe_backbone_data=backbone_source, history=history, n_params=int(sum(p.numel() for p in model.parameters())),
        probe_weights_sha256=None if probe_victims is None or not config.probe else
        {name: probe_victims[1][name].get("weights_sha256") for name in model.config.probe_victims})
    return TrainResult(model=model, card=card, history=history)


class _StepLoss(nn.Module):
    """One training step's loss as a module, so that DistributedDataParallel sees every parameter used."""

    def __init__(self, model: AttributorNet, pe_weight: float) -> None:
        super().__init__()
        self.model, self.pe_weight = model, pe_weight

    def forward(self, xb: torch.Tensor, side: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                clean: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fm_delta = self.model.feature_delta(xb, clean) if clean is not None else None
        out = self.model(xb, side) if side else self.model(xb)
        losses = self.model.losses(out, targets, fm_delta)
        return self.model.total_loss(losses, self.pe_weight), losses


def _fit_open_set(model: AttributorNet, corpus: Corpus, rows: np.ndarray, train_rows: np.ndarray, config: TrainConfig
                  ) -> OpenSetRule | None:
    """Temperatures and the abstention threshold on the calibration rows (openset.py)."""
    from advforensics.attribution.answers import model_logits

    out = model_logits(model, corpus.float_images(rows))
    if "attack_logits" not in out:
        return None
    victim = out.get("victim_logits")
    train_rows = np.random.default_rng(config.seed).permutation(train_rows)[:8000]  # enough for the covariance
    train_features = model_logits(model, corpus.float_images(train_rows)).get("attack_features")
    return fit_open_set(out["attack_logits"], corpus.attack_targets()[rows],
                        victim, corpus.victim_targets()[rows] if victim is not None else None,
                        config.target_false_abstention, features=out.get("attack_features"),
                        train_features=train_features, train_targets=corpus.attack_targets()[train_rows],
                        score=config.open_set_score, target_clean_recall=config.target_clean_recall,
                        clean_class=corpus.attack_names.index(CLEAN) if CLEAN in corpus.attack_names else None)


def _hide_own_victim(side: dict[str, torch.Tensor], config: MTAAConfig, victims: np.ndarray) -> None:
    """In place: each row's probe slot of its own victim shows a sibling's answers instead (another
    probed model of the same architecture), so the heads learn what a victim's architecture looks
    like to other models of it, which is what an investigator without the victim's weights sees."""
    offset = HISTOGRAM_BINS if config.histogram else 0
    names, classes = config.probe_victims, config.probe_victim_classes
    for i, name in enumerate(names):
        siblings = [j for j, c in enumerate(classes) if c == classes[i] and j != i]
        own = torch.from_numpy(victims == name)
        if not siblings or not own.any():
            continue
        j = siblings[0]
        raw = side["raw"]
        raw[own, offset + PROBE_FEATURES * i:offset + PROBE_FEATURES * (i + 1)] = \
            raw[own, offset + PROBE_FEATURES * j:offset + PROBE_FEATURES * (j + 1)]
        side["probe_kappa"][own, i] = side["probe_kappa"][own, j]


def _side_inputs(model: MTAA, x: torch.Tensor, device: torch.device, chunk: int = 1024) -> dict[str, torch.Tensor]:
    """The model's side inputs for every row of x, computed once (they do not change in training)."""
    if model.side is None:
        return {}
    parts: dict[str, list[torch.Tensor]] = {}
    for block in x.split(chunk):
        for key, value in model.side_inputs(block.to(device)).items():
            parts.setdefault(key, []).append(value.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def _balance_weights(targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """1 / (number of training rows of the same attack x victim class), per row  # (M,)"""
    key = targets["attack"] * 1000 + targets["victim"]
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].double()


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    payload = asdict(config)
    payload["blocks"] = list(config.blocks)
    payload["pe_channels"] = list(config.pe_channels)
    return payload


__all__ = ["TrainConfig", "TrainResult", "train_attributor", "load_backbone_data", "corpus_targets"]
