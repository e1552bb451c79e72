"""The one weights file of every artifact (zoo models, tracers, attributors, training state, the peer
scheme's copies): safetensors tensors with a JSON card in the header, verified on load, never pickle.

The header holds one metadata key, "advforensics", whose value is the card as JSON: its `format`
(what the file holds, e.g. "advforensics-model/2"), whatever the writer records, and `weights_sha256`,
a hash of the tensors' names, dtypes, shapes and bytes. One key and sorted JSON keep the bytes of
identical weights identical from save to save. Loading checks the format, recomputes the hash and
returns (tensors, card); `read_card` reads the header alone. A JSON copy of the card may sit beside
the file (`<base>.json`) for people and tools; where a format keeps one, loading requires it to equal
the card inside.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from advforensics.errors import CheckpointError
from advforensics.utils import atomic_write_bytes, write_json

CARD_KEY = "advforensics"


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state as contiguous CPU tensors, ready to store."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def card_copy_path(path: str | Path) -> Path:
    """`<base>.json` beside `<base>.safetensors`."""
    return Path(path).with_suffix(".json")


def weights_bytes(tensors: Mapping[str, torch.Tensor], card: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and the full card (with weights_sha256) for `tensors` and `card`."""
    if "format" not in card:
        raise ValueError("a weights card needs a 'format'")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    full = {**card, "weights_sha256": tensors_sha256(tensors)}
    text = json.dumps(full, sort_keys=True, default=str)
    return st_save(tensors, metadata={CARD_KEY: text}), json.loads(text)


def save_weights(path: str | Path, tensors: Mapping[str, torch.Tensor], card: Mapping[str, Any], *,
                 card_copy: bool = False) -> dict[str, Any]:
    """Write `path` atomically (and its JSON card copy when asked); returns the full card."""
    blob, full = weights_bytes(tensors, card)
    atomic_write_bytes(path, blob)
    if card_copy:
        write_json(card_copy_path(path), full)
    return full


def _header_card(blob: bytes, where: Path) -> dict[str, Any] | None:
    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + size])
        card = json.loads(header.get("__metadata__", {}).get(CARD_KEY, "null"))
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise CheckpointError(f"{where} is not a safetensors file") from None
    return card if isinstance(card, dict) else None


def _check_format(card: dict[str, Any] | None, fmt: str, where: Path, what: str) -> dict[str, Any]:
    if card is None:
        raise CheckpointError(f"{where} carries no advforensics card: not an advforensics {what} file")
    found = str(card.get("format", ""))
    if found != fmt:
        older = found.rsplit("/", 1)[0] == fmt.rsplit("/", 1)[0]
        raise CheckpointError(f"{where} holds {found or 'an unknown format'}, not {fmt}"
                              + (" (written by an older advforensics: make it again)" if older else
                                 f": not an advforensics {what} file"))
    return card


def read_card(path: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """The card in the header, format-checked but not verified against the tensors (cheap)."""
    where = Path(path)
    if not where.is_file():
        raise CheckpointError(f"{what} file {where} not found")
    with open(where, "rb") as handle:
        head = handle.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        if size > 100_000_000:
            raise CheckpointError(f"{where} is not a safetensors file")
        blob = head + handle.read(size)
    return _check_format(_header_card(blob, where), fmt, where, what)


def load_weights(path: str | Path, fmt: str, what: str, *, card_copy: str = "ignored"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, card) of a file written by `save_weights`, verified: format, tensors' hash and the JSON
    card copy beside, which must equal the card inside: card_copy "required", "if-present" (a file
    moved alone still loads) or "ignored". Any damage is a CheckpointError naming the file."""
    where = Path(path)
    if not where.is_file():
        raise CheckpointError(f"{what} file {where} not found")
    blob = where.read_bytes()
    card = _check_format(_header_card(blob, where), fmt, where, what)
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(f"cannot read weights {where}: {error}") from None
    if card.get("weights_sha256") != tensors_sha256(tensors):
        raise CheckpointError(f"{where}: the weights do not match the sha256 in its card (tampered, corrupt or "
                              "truncated)")
    copy = card_copy_path(where)
    if card_copy == "required" and not copy.is_file():
        raise CheckpointError(f"card {copy} not found")
    if card_copy != "ignored" and copy.is_file():
        try:
            beside = json.loads(copy.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"card {copy} is not valid JSON: {error}") from None
        if beside != card:
            raise CheckpointError(f"card {copy} differs from the card inside {where.name} (edited?)")
    return tensors, card


__all__ = ["CARD_KEY", "card_copy_path", "load_weights", "read_card", "save_weights", "state_tensors",
           "tensors_sha256", "weights_bytes"]
