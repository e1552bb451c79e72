"""Pickle-free storage of nested state (optimizer, scheduler, RNG): tensors go to safetensors under
a path-like key, everything else to JSON with a {"__tensor__": key} placeholder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from advforensics.errors import CheckpointError
from advforensics.utils import atomic_write_bytes, sha256_bytes, sha256_file

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


def save_state(base: Path, state: dict[str, Any]) -> None:
    """Write `<base>.safetensors` then `<base>.json` (which carries the tensors file's sha256)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten_state(state, tensors)
    blob = st_save(tensors)
    atomic_write_bytes(base.with_name(base.name + ".safetensors"), blob)
    meta = {"format": "advforensics-state/1", "sha256": sha256_bytes(blob), "state": tree}
    atomic_write_bytes(base.with_name(base.name + ".json"), json.dumps(meta).encode())


def state_exists(base: Path) -> bool:
    return base.with_name(base.name + ".json").is_file()


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file we wrote; a missing or damaged one is a CheckpointError naming `what`."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{what} {path} is not valid JSON: {error}") from None


def load_state(base: Path) -> dict[str, Any]:
    """Read a state written by save_state, checking the hash; CheckpointError on any damage."""
    json_path, st_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")
    meta = read_json(json_path, "training state")
    if not isinstance(meta, dict) or meta.get("format") != "advforensics-state/1":
        raise CheckpointError(f"{json_path} is not an advforensics training state")
    if not st_path.is_file():
        raise CheckpointError(f"training state tensors {st_path} not found")
    if sha256_file(st_path) != meta.get("sha256"):
        raise CheckpointError(f"training state {st_path} does not match the hash in {json_path} "
                              "(corrupt, truncated or tampered)")
    try:
        tensors = st_load(st_path.read_bytes())
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(f"cannot read {st_path}: {error}") from None
    return unflatten_state(meta["state"], tensors)
