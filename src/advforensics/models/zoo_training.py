"""`train_zoo_model`: the whole `models train` job from names and paths: data, the model's documented
defaults, the resumable loop, and the checkpoint with its provenance card."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advforensics import distributed
from advforensics.errors import InputValidationError
from advforensics.models.base import ZooModel, create_model
from advforensics.models.checkpoint import save_model, weights_paths
from advforensics.models.serialization import state_exists
from advforensics.models.training import TrainConfig, TrainResult, default_train_config, train_model


@dataclass
class ZooTraining:
    """What a run made: the model, its config and measured result, the card saved with it, its file,
    and this session's wall time."""

    model: ZooModel
    config: TrainConfig
    result: TrainResult
    card: dict[str, Any]
    weights_path: Path
    wall_seconds: float


def train_zoo_model(model_name: str, data: str, out: str | Path, *, data_dir: str | Path | None = None,
                    epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                    width: float | None = None, shift: int | None = None, flip: bool | None = None,
                    limit: int | None = None, stage1_px: int = 0,
                    resume: bool = False, overwrite: bool = False, progress: bool = True,
                    seed: int = 0) -> ZooTraining:
    """Train a zoo model on a data set's train split (None = the model's documented default), evaluating
    the test split after every epoch; the training state goes to OUT.train-state.safetensors after each
    epoch, and `resume` continues from it to the same weights. Under torchrun the ranks train one model
    (see models.training) and rank 0 writes it. An existing model at OUT is replaced only
    with `overwrite` (or when resuming its own run)."""
    from advforensics.data import load_dataset

    out = Path(out)
    weights_path, _ = weights_paths(out)
    state_path = out.with_name(out.name + ".train-state")
    has_state = state_exists(state_path)
    if weights_path.exists() and not (overwrite or (resume and has_state)):
        raise InputValidationError(f"{weights_path} exists; pass --overwrite to replace it"
                                   + ("" if has_state else " (there is no training state to --resume from)"))
    ranks = distributed.current()
    if not resume and ranks.is_main:
        state_path.with_name(state_path.name + ".safetensors").unlink(missing_ok=True)
    ranks.barrier()  # no rank reads a state before rank 0 has removed the old one
    train = load_dataset(data, split="train", data_dir=data_dir, limit=limit)
    test = load_dataset(data, split="test", data_dir=data_dir)
    channels, height, _ = train.info.shape
    model = create_model(model_name, num_classes=len(train.info.classes), in_channels=channels,
                         image_size=height, width=width, seed=seed, stage1_px=stage1_px)
    config = default_train_config(model_name, epochs=epochs, batch_size=batch_size, lr=lr, shift=shift, flip=flip,
                                  seed=seed)
    started = time.perf_counter()
    result = train_model(model, train, test, config, checkpoint_path=state_path, progress=progress)
    wall = time.perf_counter() - started
    card = {
        "dataset": {"name": train.info.name, "sha256": train.info.sha256, "num_train": len(train.labels),
                    "test_sha256": test.info.sha256, "num_test": len(test.labels), "limit": limit},
        "test_accuracy": result.test_accuracy, "seed": seed, "train_config": config.to_dict(),
        "train_seconds": result.train_seconds, "train_cpu_seconds": result.cpu_seconds, "history": result.history,
        "torch_threads": torch.get_num_threads(), "ranks": ranks.world_size, "torch_version": torch.__version__,
        "machine": platform.machine(),
    }
    if ranks.is_main:
        save_model(model, out, card, overwrite=overwrite or resume)
    ranks.barrier()  # the model file is complete on every rank's return
    return ZooTraining(model, config, result, card, weights_path, wall)


__all__ = ["ZooTraining", "train_zoo_model"]
