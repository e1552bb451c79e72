"""advforensics.weights: the one weights file (card inside, tensors' hash, optional JSON copy)."""

from __future__ import annotations

import json

import pytest
import torch

from advforensics.errors import CheckpointError
from advforensics.weights import card_copy_path, load_weights, read_card, save_weights, tensors_sha256

FORMAT = "advforensics-test/2"


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 4, generator=g), "b": torch.arange(5, dtype=torch.int64),
            "empty": torch.zeros(0), "half": torch.ones(2, dtype=torch.float16)}


def test_round_trip_and_identical_bytes(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    card = save_weights(path, _tensors(), {"format": FORMAT, "note": "a", "nested": {"k": [1, 2]}}, card_copy=True)
    assert card["weights_sha256"] == tensors_sha256(_tensors()) and card["nested"] == {"k": [1, 2]}
    first = path.read_bytes()
    save_weights(path, _tensors(), {"nested": {"k": [1, 2]}, "note": "a", "format": FORMAT}, card_copy=True)
    assert path.read_bytes() == first  # key order does not matter: same weights and card, same bytes
    tensors, loaded = load_weights(path, FORMAT, "test", card_copy="required")
    assert loaded == card == json.loads(card_copy_path(path).read_text()) == read_card(path, FORMAT, "test")
    assert all(torch.equal(tensors[k], v) for k, v in _tensors().items())


def test_hash_covers_names_dtypes_shapes_and_values() -> None:
    base = tensors_sha256(_tensors())
    for change in ({"w": torch.zeros(3, 4)}, {"w": _tensors()["w"].reshape(4, 3)},
                   {"b": torch.arange(5, dtype=torch.int32)}, {"w2": _tensors()["w"]}):
        assert tensors_sha256({**_tensors(), **change}) != base


def test_every_damage_is_refused(tmp_path) -> None:
    path = tmp_path / "x.safetensors"
    save_weights(path, _tensors(), {"format": FORMAT}, card_copy=True)
    good = path.read_bytes()
    with pytest.raises(CheckpointError, match="holds advforensics-test/2, not advforensics-other/1"):
        load_weights(path, "advforensics-other/1", "other")
    with pytest.raises(CheckpointError, match="older advforensics"):
        load_weights(path, "advforensics-test/3", "test")
    data = bytearray(good)
    data[-2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_weights(path, FORMAT, "test")
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cannot read weights|not a safetensors"):
        load_weights(path, FORMAT, "test")
    path.write_bytes(good)
    card_copy_path(path).write_text(json.dumps({"format": FORMAT}))
    load_weights(path, FORMAT, "test")  # "ignored" by default
    with pytest.raises(CheckpointError, match="differs from the card inside"):
        load_weights(path, FORMAT, "test", card_copy="if-present")
    card_copy_path(path).unlink()
    load_weights(path, FORMAT, "test", card_copy="if-present")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(path, FORMAT, "test", card_copy="required")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "missing.safetensors", FORMAT, "test")
    from safetensors.torch import save_file

    save_file(_tensors(), str(path))  # a plain safetensors file, no card
    with pytest.raises(CheckpointError, match="carries no advforensics card"):
        read_card(path, FORMAT, "test")
