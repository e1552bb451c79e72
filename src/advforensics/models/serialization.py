"""Pickle-free storage of nested state (optimizer, scheduler, RNG): tensors go to safetensors under
a path-like key, everything else to JSON with a {"__tensor__": key} placeholder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from advforensics.weights import load_weights, save_weights

_TENSOR = "__tensor__"
_INTKEYS = "__intkeys__"


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """Replace every tensor in a nested dict/list by a placeholder; collect the tensors."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, dict):
        int_keys = all(isinstance(k, int) for k in obj) and bool(obj)
        out = {str(k): flatten_state(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        if int_keys:  # optimizer state is keyed by parameter index; JSON keys are strings
            out[_INTKEYS] = True
        return out
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} without pickle")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        int_keys = obj.get(_INTKEYS, False)
        return {(int(k) if int_keys else k): unflatten_state(v, tensors) for k, v in obj.items()
                if k != _INTKEYS}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


STATE_FORMAT = "advforensics-state/2"


def state_file(base: Path) -> Path:
    return base.with_name(base.name + ".safetensors")


def save_state(base: Path, state: dict[str, Any]) -> None:
    """Write `<base>.safetensors` (advforensics.weights): the tensors, and the rest of the tree in the card."""
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten_state(state, tensors)
    save_weights(state_file(base), tensors, {"format": STATE_FORMAT, "state": tree})


def state_exists(base: Path) -> bool:
    return state_file(base).is_file()


def load_state(base: Path) -> dict[str, Any]:
    """Read a state written by save_state, checking the hash; CheckpointError on any damage."""
    tensors, card = load_weights(state_file(base), STATE_FORMAT, "training state")
    return unflatten_state(card["state"], tensors)
