"""A small, resumable, deterministic training loop for zoo models.

AdamW (or SGD with Nesterov momentum) under a OneCycle schedule. After every epoch the loop writes
a training state -- model, optimizer, scheduler, epoch, history, RNG states -- as one weights file
(advforensics.weights, no pickle) to `checkpoint_path`; calling train_model again with the same arguments resumes
from it and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from advforensics import distributed
from advforensics.errors import CheckpointError, InputValidationError
from advforensics.models.base import ModelConfig, as_input
from advforensics.models.serialization import load_state, save_state, state_exists

log = logging.getLogger(__name__)


class ImageDatasetLike(Protocol):
    """What train_model needs from advforensics.data.ImageDataset."""

    images: Any  # (N, C, H, W) float32 in [0, 1], numpy array or tensor
    labels: Any  # (N,) int64


@dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters. `lr` is the peak learning rate of the OneCycle schedule."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # "adamw" | "sgd" (momentum 0.9, Nesterov)
    schedule: str = "onecycle"  # "onecycle" | "constant"
    label_smoothing: float = 0.0
    shift: int = 0  # augmentation: random translation of each training image by up to +-shift px
    flip: bool = False  # augmentation: mirror each training image left-right with probability 1/2
    seed: int = 0
    eval_batch_size: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise InputValidationError("epochs, batch_size and eval_batch_size must be positive")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputValidationError(f"lr must be a positive number, got {self.lr}")
        if not isinstance(self.shift, int) or self.shift < 0:
            raise InputValidationError(f"shift must be an integer >= 0, got {self.shift!r}")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise InputValidationError("weight_decay must be >= 0 and label_smoothing in [0, 1)")
        if self.optimizer not in ("adamw", "sgd"):
            raise InputValidationError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("onecycle", "constant"):
            raise InputValidationError(f"schedule must be 'onecycle' or 'constant', got {self.schedule!r}")


# Defaults that reach >= 99% MNIST test accuracy at the registered default widths
# (see the model zoo section of docs/data-and-models.md for the measured numbers).
DEFAULT_TRAIN_CONFIGS: dict[str, TrainConfig] = {
    "lenet": TrainConfig(epochs=4, lr=6e-3),
    "resnet18": TrainConfig(epochs=6, lr=3e-3, shift=2),
    "resnet50": TrainConfig(epochs=3, lr=3e-3, shift=2),
    "vgg16": TrainConfig(epochs=2, lr=3e-3),
    "vgg19": TrainConfig(epochs=3, lr=3e-3),
    "inception_v3": TrainConfig(epochs=3, lr=1e-2),
}


def default_train_config(name: str, **overrides: Any) -> TrainConfig:
    """The documented default TrainConfig of a zoo model, with keyword overrides (None = keep)."""
    base = DEFAULT_TRAIN_CONFIGS.get(name.lower(), TrainConfig())
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class TrainResult:
    """What a training run measured; `history` holds one dict per epoch."""

    epochs: int
    train_seconds: float  # wall clock, summed over all (possibly resumed) sessions
    cpu_seconds: float  # process CPU time, summed likewise (= wall time on an idle CPU, 1 thread)
    test_accuracy: float | None
    train_accuracy: float  # running accuracy over the last epoch
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_tensors(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) float32 and labels (N,) int64 as tensors, checked."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if x.dim() != 4:
        raise InputValidationError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputValidationError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    return as_input(x), y.long()


def _check_fits(config: ModelConfig | None, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if config is None:
        return
    if x.shape[1] != config.in_channels:
        raise InputValidationError(f"{what} images have {x.shape[1]} channels; the model expects "
                                   f"{config.in_channels}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= config.num_classes):
        raise InputValidationError(f"{what} labels fall outside [0, {config.num_classes - 1}]")


@torch.no_grad()
def predict(model: nn.Module, images: Any, batch_size: int = 512) -> torch.Tensor:
    """Arg-max labels (N,) in eval mode (the model's train/eval mode is restored afterwards)."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    was_training = model.training
    model.eval()
    try:
        out = [model(batch).argmax(1) for batch in x.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def evaluate(model: nn.Module, images: Any, labels: Any, batch_size: int = 512,
             ranks: distributed.Ranks = distributed.SINGLE) -> float:
    """Top-1 accuracy of `model` on (N, C, H, W) images and (N,) labels (each rank counts its share)."""
    x, y = as_tensors(images, labels)
    if len(y) == 0:
        raise InputValidationError("cannot evaluate on an empty data set")
    if ranks.distributed:  # each rank counts its share of the images
        share = torch.arange(ranks.rank, len(y), ranks.world_size)
        x, y = x[share], y[share]
    correct, total = ranks.all_sum([float((predict(model, x, batch_size) == y).sum()), len(y)])
    return correct / total


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of (B, C, H, W) by its own random (dy, dx) in [-shift, shift], filling
    with zeros (MNIST's background): cheap augmentation that keeps digits whole.

    Draws from `generator`, so training stays deterministic and resumable.
    """
    if shift == 0:
        return x
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * shift + 1, (2, b), generator=generator)  # (2, B) top-left in padded
    padded = nn.functional.pad(x, (shift, shift, shift, shift))  # (B, C, H + 2s, W + 2s)
    rows = offsets[0][:, None] + torch.arange(h)  # (B, H)
    cols = offsets[1][:, None] + torch.arange(w)  # (B, W)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of (B, C, H, W) left-right with probability 1/2, drawn from `generator`:
    natural images (CIFAR-10) keep their class when mirrored; digits do not, so it is off by default."""
    mirror = torch.rand(len(x), generator=generator) < 0.5  # (B,)
    return torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x)


def _make_optimizer(model: nn.Module, config: TrainConfig, steps_per_epoch: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    # No weight decay on BatchNorm / bias parameters (a standard, safe choice).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=config.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    scheduler = None
    if config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch)
    return optimizer, scheduler


def _rank_seed(seed: int, epoch: int, ranks: distributed.Ranks) -> int:
    """The seed of one rank's augmentation and dropout draws in one epoch (a resumed run repeats them)."""
    return (seed * 1_000_003 + epoch * ranks.world_size + ranks.rank) % 2**63


def train_model(model: nn.Module, train: ImageDatasetLike, test: ImageDatasetLike | None,
                config: TrainConfig, checkpoint_path: Path | None = None, progress: bool = True,
                ) -> TrainResult:
    """Train in place; deterministic given config.seed and the model's initial weights.

    With `checkpoint_path`, a training state is saved after each epoch and an existing state for
    the same model and config is resumed (a state for another model/config raises CheckpointError).
    The model is left in eval mode.
    """
    x_train, y_train = as_tensors(train.images, train.labels)
    model_config = getattr(model, "config", None)
    _check_fits(model_config, x_train, y_train, "training")
    if len(y_train) == 0:
        raise InputValidationError("the training set is empty")
    test_xy = as_tensors(test.images, test.labels) if test is not None else None
    if test_xy is not None:
        _check_fits(model_config, *test_xy, "test")

    ranks = distributed.current()
    sampler, batch_size = None, config.batch_size
    if ranks.distributed:
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(range(len(y_train)), num_replicas=ranks.world_size, rank=ranks.rank,
                                     shuffle=True, seed=config.seed)
        batch_size = math.ceil(config.batch_size / ranks.world_size)
    steps_per_epoch = math.ceil((len(sampler) if sampler is not None else len(y_train)) / batch_size)
    optimizer, scheduler = _make_optimizer(model, config, steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout draws from the global generator
    identity = {"train_config": config.to_dict(), "num_train": len(y_train),
                "model_config": model_config.to_dict() if isinstance(model_config, ModelConfig) else None,
                **({"ranks": ranks.world_size} if ranks.distributed else {})}
    step_model = nn.parallel.DistributedDataParallel(model) if ranks.distributed else model

    start_epoch, history, seconds, cpu_seconds = 0, [], 0.0, 0.0
    if checkpoint_path is not None and state_exists(Path(checkpoint_path)):
        state = load_state(Path(checkpoint_path))
        if state.get("identity") != identity:
            raise CheckpointError(f"training state {checkpoint_path} belongs to another model, data "
                                  "set, training config or number of ranks; remove it or choose another path")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["rng"]["shuffle"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        seconds, cpu_seconds = float(state["seconds"]), float(state["cpu_seconds"])
        log.info("resuming %s from epoch %d", checkpoint_path, start_epoch)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    train_acc = history[-1]["train_accuracy"] if history else 0.0
    for epoch in range(start_epoch, config.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler))
            generator = torch.Generator().manual_seed(_rank_seed(config.seed, epoch, ranks))
            torch.manual_seed(_rank_seed(config.seed, epoch, ranks))
        else:
            order = torch.randperm(len(y_train), generator=generator)
        correct, total, loss_sum = 0, 0, 0.0
        bar = tqdm(order.split(batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not (progress and ranks.is_main), leave=False, unit="batch")
        for idx in bar:
            xb, yb = x_train[idx], y_train[idx]  # (B, C, H, W), (B,)
            xb = random_shift(xb, config.shift, generator)
            if config.flip:
                xb = random_flip(xb, generator)
            logits = step_model(xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            correct += int((logits.argmax(1) == yb).sum())
            total += len(yb)
            loss_sum += loss.item() * len(yb)
            bar.set_postfix(loss=f"{loss_sum / total:.4f}", acc=f"{correct / total:.4f}")
        bar.close()
        correct, total, loss_sum = ranks.all_sum([correct, total, loss_sum])
        train_acc = correct / total
        record = {"epoch": epoch + 1, "loss": loss_sum / total, "train_accuracy": train_acc}
        if test_xy is not None:
            record["test_accuracy"] = evaluate(model, *test_xy, batch_size=config.eval_batch_size, ranks=ranks)
        seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0
        record["seconds"], record["cpu_seconds"] = seconds, cpu_seconds
        history.append(record)
        log.info("epoch %d/%d: %s", epoch + 1, config.epochs, record)
        if checkpoint_path is not None and ranks.is_main:
            save_state(Path(checkpoint_path), {
                "identity": identity, "epoch": epoch + 1, "history": history, "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "rng": {"shuffle": generator.get_state(), "torch": torch.get_rng_state()},
            })
    model.eval()
    test_acc = history[-1].get("test_accuracy") if history else None
    return TrainResult(epochs=config.epochs, train_seconds=seconds, cpu_seconds=cpu_seconds,
                       test_accuracy=test_acc,
                       train_accuracy=train_acc, history=history, resumed_from_epoch=start_epoch)
