"""The attributor file: a trained network and its card (what it was trained on, its vocabularies, its
split and open-set rule), stored with advforensics.weights (card inside, a JSON copy beside).

    model, card = load_attributor("runs/mtaa.safetensors")   # verified: hash, copy, architecture
    card.attack_names, card.image_shape, card.split.test_fraction
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from advforensics.attribution.baselines import SingleLabelConfig, SingleLabelNet
from advforensics.attribution.mtaa import MTAA, MTAAConfig
from advforensics.errors import AdvForensicsError, CheckpointError
from advforensics.weights import card_copy_path, load_weights, read_card, save_weights, state_tensors

ATTRIBUTOR_FORMAT = "advforensics-attributor/2"
MODEL_KINDS = ("mtaa", "single-task", "single-label")

AttributorNet = MTAA | SingleLabelNet


@dataclass(frozen=True)
class CardSplit:
    """How the corpus was split, by clean image, so that evaluation reproduces the test rows."""

    test_fraction: float
    calibration_fraction: float
    seed: int
    by: str = "clean_index"


@dataclass
class AttributorCard:
    """kind: one of MODEL_KINDS. config: the network's constructor config (MTAAConfig or
    SingleLabelConfig as a dict). hyper_units: each attack's strength unit (vocab.Unit). open_set:
    the fitted OpenSetRule as a dict, None without one. train: the TrainConfig as a dict. subset:
    the parent corpus and the classes kept, for a model trained on part of a corpus."""

    kind: str
    config: dict[str, Any]
    attack_names: list[str]
    victim_names: list[str]
    image_shape: tuple[int, int, int]
    split: CardSplit
    hyper_units: dict[str, str] = field(default_factory=dict)
    corpus_id: str | None = None
    subset: dict[str, Any] | None = None
    open_set: dict[str, Any] | None = None
    train: dict[str, Any] = field(default_factory=dict)
    n_train: int = 0
    n_calibration: int = 0
    steps: int = 0
    n_params: int = 0
    train_device: str = "cpu"
    train_seconds: float | None = None
    pe_backbone_train_accuracy: float | None = None
    pe_backbone_data: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    probe_weights_sha256: dict[str, str | None] | None = None
    weights_sha256: str | None = None  # set when the file is written or read

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise CheckpointError(f"unknown attributor kind {self.kind!r} (known: {', '.join(MODEL_KINDS)})")
        self.image_shape = tuple(int(v) for v in self.image_shape)  # type: ignore[assignment]
        if len(self.image_shape) != 3:
            raise CheckpointError(f"attributor card: image_shape must be (C, H, W), got {self.image_shape}")
        if isinstance(self.split, dict):
            self.split = CardSplit(**self.split)
        self.attack_names, self.victim_names = list(self.attack_names), list(self.victim_names)

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["image_shape"] = list(self.image_shape)
        return {"format": ATTRIBUTOR_FORMAT, **payload}

    @classmethod
    def from_dict(cls, payload: dict[str, Any], where: Path | str = "attributor card") -> AttributorCard:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in known}
        try:
            return cls(**values)
        except (TypeError, ValueError, AdvForensicsError) as error:
            raise CheckpointError(f"{where}: not a valid attributor card: {error}") from None


def build_attributor(card: AttributorCard) -> AttributorNet:
    """The untrained network a card describes."""
    try:
        if card.kind in ("mtaa", "single-task"):
            return MTAA(MTAAConfig.from_dict(card.config))
        return SingleLabelNet(SingleLabelConfig.from_dict(card.config))
    except (TypeError, ValueError, KeyError, AdvForensicsError) as error:
        raise CheckpointError(f"attributor card: its {card.kind} config does not build: {error}") from None


def save_attributor(model: AttributorNet, card: AttributorCard, path: str | Path) -> Path:
    """Write the weights with the card inside and a JSON copy beside; returns the copy's path. The
    card's weights_sha256 is set to the written tensors'."""
    full = save_weights(path, state_tensors(model), card.to_dict(), card_copy=True)
    card.weights_sha256 = full["weights_sha256"]
    return card_copy_path(path)


def peek_card(path: str | Path) -> AttributorCard | None:
    """The card in an attributor file's header, unverified and without loading the weights (None when
    the file is missing or not one); `load_attributor` verifies everything."""
    try:
        return AttributorCard.from_dict(read_card(path, ATTRIBUTOR_FORMAT, "attributor"), path)
    except CheckpointError:
        return None


def load_attributor(path: str | Path) -> tuple[AttributorNet, AttributorCard]:
    """Load weights and card written by `save_attributor`, in eval mode; any mismatch (hash, copy,
    architecture) raises CheckpointError."""
    target = Path(path)
    tensors, payload = load_weights(target, ATTRIBUTOR_FORMAT, "attributor", card_copy="if-present")
    card = AttributorCard.from_dict(payload, target)
    model = build_attributor(card)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{target}: weights do not match the card's architecture: {error}") from None
    model.eval()
    return model, card


__all__ = ["ATTRIBUTOR_FORMAT", "AttributorCard", "AttributorNet", "CardSplit", "MODEL_KINDS", "build_attributor",
           "load_attributor", "peek_card", "save_attributor"]
