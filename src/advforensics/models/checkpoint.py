"""Model weights as `<path>.safetensors` with the card inside (advforensics.weights) and a copy of it,
`<path>.json`, beside (never pickle).

The card records the architecture (ModelConfig), the weights' sha256 and whatever provenance the
caller passes (data set and its hash, accuracy, seed, training config, ...). Loading checks the
hash and the copy, rebuilds the architecture from the card and requires every tensor name and shape
to match, so a tampered, truncated or mismatched file fails with CheckpointError instead of
half-loading.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advforensics import __version__
from advforensics.errors import AdvForensicsError, CheckpointError
from advforensics.models.base import ModelConfig, ZooModel, build_model, count_parameters
from advforensics.weights import load_weights, read_card as read_weights_card, save_weights, state_tensors, \
    tensors_sha256

log = logging.getLogger(__name__)
CARD_FORMAT = "advforensics-model/2"


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
    saving identical weights again only rewrites the card.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise CheckpointError("only zoo models (with a .config: ModelConfig) can be saved")
    weights_path, _ = weights_paths(path)
    state = state_tensors(model)
    if weights_path.exists() and not overwrite:
        try:
            existing = read_weights_card(weights_path, CARD_FORMAT, "model").get("weights_sha256")
        except CheckpointError:
            existing = None
        if existing != tensors_sha256(state):
            raise CheckpointError(f"{weights_path} already holds a different model; "
                                  "pass overwrite=True (--overwrite) to replace it")
    full_card = dict(card or {})
    full_card.update({"format": CARD_FORMAT, "architecture": config.to_dict(), "param_count": count_parameters(model),
                      "weights_file": weights_path.name, "advforensics_version": __version__})
    full_card = save_weights(weights_path, state, full_card, card_copy=True)
    log.info("saved %s (%s, sha256 %s)", weights_path, config.name, full_card["weights_sha256"][:12])
    return weights_path


def read_card(path: str | Path) -> dict[str, Any]:
    """The card of a model file (from its header: cheap, not verified against the weights)."""
    weights_path, _ = weights_paths(path)
    card = read_weights_card(weights_path, CARD_FORMAT, "model")
    if "architecture" not in card:
        raise CheckpointError(f"model card in {weights_path} lacks 'architecture'")
    return card


def load_model(path: str | Path, expected_name: str | None = None) -> tuple[ZooModel, dict[str, Any]]:
    """Load a model saved by save_model, in eval mode, with its card.

    CheckpointError when the file or its card copy is missing, unreadable or truncated, when the
    weights' sha256 differs from the card's (tampered), when the copy beside differs from the card
    inside, when the card names another architecture than `expected_name`, or when any tensor name or
    shape differs from the card's architecture.
    """
    weights_path, _ = weights_paths(path)
    state, card = load_weights(weights_path, CARD_FORMAT, "model", card_copy="required")
    try:
        config = ModelConfig.from_dict(card["architecture"])
    except (AdvForensicsError, AttributeError, KeyError, TypeError) as error:
        raise CheckpointError(f"model card in {weights_path}: {error}") from None
    if expected_name is not None and config.name != expected_name.lower():
        raise CheckpointError(f"{weights_path} holds a {config.name}, not a {expected_name}")
    try:
        model = build_model(config)
    except AdvForensicsError as error:
        raise CheckpointError(f"model card in {weights_path}: {error}") from None
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
