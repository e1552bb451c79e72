"""Model weights as `<path>.safetensors` plus a JSON card `<path>.json` (never pickle).

The card records the architecture (ModelConfig), the weights file's sha256 and whatever provenance
the caller passes (data set and its hash, accuracy, seed, training config, ...). Loading checks the
hash, rebuilds the architecture from the card and requires every tensor name and shape to match,
so a tampered, truncated or mismatched file fails with CheckpointError instead of half-loading.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from advforensics import __version__
from advforensics.errors import AdvForensicsError, CheckpointError
from advforensics.models.base import ModelConfig, ZooModel, build_model, count_parameters
from advforensics.models.serialization import read_json
from advforensics.utils import atomic_write_bytes, sha256_bytes, sha256_file

log = logging.getLogger(__name__)
CARD_FORMAT = "advforensics-model/1"


def weights_paths(path: str | Path) -> tuple[Path, Path]:
    """(`<base>.safetensors`, `<base>.json`) for a base path given with or without a suffix."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_model(model: nn.Module, path: str | Path, card: dict[str, Any] | None = None,
               overwrite: bool = False) -> Path:
    """Save weights + card; returns the .safetensors path.

    Refuses (CheckpointError) to replace an existing, different model unless overwrite=True;
    saving identical weights again is a no-op apart from rewriting the card.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise CheckpointError("only zoo models (with a .config: ModelConfig) can be saved")
    weights_path, card_path = weights_paths(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes a multi-key metadata map in arbitrary order, which
    # would make the bytes (and the sha256) of identical weights differ from save to save.
    blob = st_save(state, metadata={"advforensics": f"{CARD_FORMAT} {config.name}"})
    digest = sha256_bytes(blob)
    if weights_path.exists() and not overwrite:
        existing = sha256_file(weights_path)
        if existing != digest:
            raise CheckpointError(f"{weights_path} already holds a different model; "
                                  "pass overwrite=True (--overwrite) to replace it")
    full_card = dict(card or {})
    full_card.update({
        "format": CARD_FORMAT,
        "architecture": config.to_dict(),
        "param_count": count_parameters(model),
        "weights_file": weights_path.name,
        "weights_sha256": digest,
        "advforensics_version": __version__,
    })
    atomic_write_bytes(weights_path, blob)
    atomic_write_bytes(card_path, (json.dumps(full_card, indent=2, sort_keys=True, default=str) + "\n").encode())
    log.info("saved %s (%s, sha256 %s)", weights_path, config.name, digest[:12])
    return weights_path


def read_card(path: str | Path) -> dict[str, Any]:
    """The JSON card beside a weights file, validated for format and architecture fields."""
    _, card_path = weights_paths(path)
    card = read_json(card_path, "model card")
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise CheckpointError(f"{card_path} is not an advforensics model card (format {CARD_FORMAT})")
    for key in ("architecture", "weights_sha256"):
        if key not in card:
            raise CheckpointError(f"model card {card_path} lacks {key!r}")
    return card


def load_model(path: str | Path, expected_name: str | None = None) -> tuple[ZooModel, dict[str, Any]]:
    """Load a model saved by save_model, in eval mode, with its card.

    CheckpointError when the card or weights are missing, unreadable or truncated, when the weights'
    sha256 differs from the card's (tampered), when the card names another architecture than
    `expected_name`, or when any tensor name or shape differs from the card's architecture.
    """
    weights_path, card_path = weights_paths(path)
    card = read_card(path)
    try:
        config = ModelConfig.from_dict(card["architecture"])
    except (AdvForensicsError, AttributeError) as error:
        raise CheckpointError(f"model card {card_path}: {error}") from None
    if expected_name is not None and config.name != expected_name.lower():
        raise CheckpointError(f"{card_path} holds a {config.name}, not a {expected_name}")
    if not weights_path.is_file():
        raise CheckpointError(f"weights file {weights_path} not found")
    blob = weights_path.read_bytes()
    if sha256_bytes(blob) != card["weights_sha256"]:
        raise CheckpointError(f"{weights_path} does not match the sha256 in its card "
                              "(tampered, corrupt or truncated)")
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(f"cannot read weights {weights_path}: {error}") from None
    try:
        model = build_model(config)
    except AdvForensicsError as error:
        raise CheckpointError(f"model card {card_path}: {error}") from None
    _check_state(model, state, weights_path, config.name)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, card


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], where: Path, name: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where} does not fit a {name} as its card describes: {len(missing)} missing tensors "
            f"({', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}), {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])}{'...' if len(unexpected) > 3 else ''})")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{where}: tensor shapes differ from the card's {name}: " + "; ".join(wrong[:3]))
