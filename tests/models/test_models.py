"""Registry-driven contract tests: every zoo model gets the same checks (timm's habit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from advforensics.errors import CheckpointError, InputValidationError, UnknownNameError
from advforensics.models.checkpoint import CARD_FORMAT
from advforensics.weights import load_weights, save_weights
from advforensics.models import (
    ModelConfig, build_model, count_parameters, create_model, list_models, load_model, save_model, weights_paths,
)

TINY = 0.0625  # width for the contract tests: 4-32 channels, fast on a CPU
ALL = list_models()


def test_registry_holds_the_whole_zoo() -> None:
    assert ALL == sorted(["inception_v3", "lenet", "resnet18", "resnet50", "vgg16", "vgg19"])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
def test_output_shape_and_finite(name: str, channels: int, size: int) -> None:
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size, width=TINY, seed=0)
    assert model.config == ModelConfig(name, 7, channels, size, TINY)
    model.eval()
    x = torch.rand(3, channels, size, size)  # (B, C, H, W)
    logits = model(x)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # float64 input (as ART's hard-label attacks pass) gives the same float32 logits
    assert torch.allclose(model(x.double()), logits, atol=1e-5)
    # channels-last-looking strides (as NumPy transposes produce) give the very same logits
    x_cl = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.equal(model(x_cl), logits)


@pytest.mark.parametrize("name", ALL)
def test_forward_224x224_rgb(name: str) -> None:
    model = create_model(name, num_classes=10, in_channels=3, image_size=224, width=TINY, seed=0).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 10)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name: str) -> None:
    model = create_model(name, width=TINY, seed=0).train()
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"zero gradient for {pname}"


@pytest.mark.parametrize("name", ALL)
def test_forward_features_are_per_stage_maps(name: str) -> None:
    model = create_model(name, width=TINY, seed=0).eval()
    features = model.forward_features(torch.rand(2, 1, 28, 28))
    assert len(features) >= 2 and all(f.dim() == 4 and f.shape[0] == 2 for f in features)
    # deeper stages never have a larger spatial extent
    sizes = [f.shape[-1] for f in features]
    assert sizes == sorted(sizes, reverse=True)


def test_resnet_features_have_documented_channels() -> None:
    model = create_model("resnet18", seed=0).eval()
    features = model.forward_features(torch.rand(2, 1, 28, 28))
    assert [f.shape[1] for f in features] == model.feature_channels == [16, 32, 64, 128]
    assert [f.shape[-1] for f in features] == [14, 7, 4, 2]  # revision 2: stem keeps 28 px at 14


def test_old_cards_rebuild_the_revision_1_stem(tmp_path: Path) -> None:
    """A card written before revisions existed (no "revision" key) rebuilds the 7x7-stem ResNet
    its weights were trained with, instead of silently loading them into the 14x14 stem."""
    old = build_model(ModelConfig("resnet18", revision=1), seed=0).eval()
    assert [f.shape[-1] for f in old.forward_features(torch.rand(1, 1, 28, 28))] == [7, 4, 2, 1]
    save_model(old, tmp_path / "old", card={})
    _edit_card(tmp_path / "old", lambda card: card["architecture"].pop("revision"))
    loaded, _ = load_model(tmp_path / "old")
    assert loaded.config.revision == 1
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), old(x))
    with pytest.raises(InputValidationError, match="revision"):
        build_model(ModelConfig("resnet18", revision=7))


def test_a_resnet_can_keep_cifar_at_full_resolution(tmp_path: Path) -> None:
    """stage1_px 32: the first stage of a 32 px ResNet-18 runs at 32 px (default: 16); the card keeps
    the choice, and cards without it read as the default."""
    full = create_model("resnet18", in_channels=3, image_size=32, width=0.125, seed=0, stage1_px=32).eval()
    default = create_model("resnet18", in_channels=3, image_size=32, width=0.125, seed=0).eval()
    x = torch.rand(2, 3, 32, 32)
    assert [f.shape[-1] for f in full.forward_features(x)] == [32, 16, 8, 4]
    assert [f.shape[-1] for f in default.forward_features(x)] == [16, 8, 4, 2]
    assert "stage1_px" not in default.config.to_dict()  # old cards' exact form
    save_model(full, tmp_path / "full", card={})
    loaded, _ = load_model(tmp_path / "full")
    assert loaded.config.stage1_px == 32 and torch.equal(loaded(x), full(x))
    with pytest.raises(InputValidationError, match="fixed stem"):
        create_model("lenet", stage1_px=14)
    with pytest.raises(InputValidationError, match="stage1_px"):
        create_model("resnet18", image_size=28, stage1_px=64)


@pytest.mark.parametrize("name", ALL)
def test_seed_makes_initial_weights_deterministic(name: str) -> None:
    a, b = create_model(name, width=TINY, seed=3), create_model(name, width=TINY, seed=3)
    c = create_model(name, width=TINY, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))


def test_width_scales_parameters() -> None:
    assert count_parameters(create_model("resnet18", width=0.5)) > 3 * count_parameters(
        create_model("resnet18", width=0.25))


def test_bad_names_and_configs_fail_clearly() -> None:
    with pytest.raises(UnknownNameError, match="known: inception_v3, lenet"):
        create_model("alexnet")
    with pytest.raises(InputValidationError, match="in_channels"):
        create_model("lenet", in_channels=2)
    with pytest.raises(InputValidationError, match="image_size"):
        create_model("lenet", image_size=4)
    with pytest.raises(InputValidationError, match="width"):
        create_model("lenet", width=0.0)


# --- checkpoints -------------------------------------------------------------------------------

def _saved(tmp_path: Path, name: str) -> tuple[torch.nn.Module, Path]:
    model = create_model(name, width=TINY, seed=1)
    # Non-trivial BatchNorm statistics so that buffers matter in the round trip.
    model.train()
    with torch.no_grad():
        model(torch.rand(16, 1, 28, 28))
    model.eval()
    base = tmp_path / name
    save_model(model, base, {"dataset": {"name": "test"}, "seed": 1})
    return model, base


@pytest.mark.parametrize("name", ALL)
def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path, name: str) -> None:
    model, base = _saved(tmp_path, name)
    loaded, card = load_model(base)
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert card["architecture"] == model.config.to_dict()
    assert card["param_count"] == count_parameters(model) and card["seed"] == 1
    assert len(card["weights_sha256"]) == 64 and card["advforensics_version"]


@pytest.mark.parametrize("name", ALL)
def test_tampered_weights_are_rejected(tmp_path: Path, name: str) -> None:
    _, base = _saved(tmp_path, name)
    weights, _ = weights_paths(base)
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one flipped bit in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_model(base)


@pytest.mark.parametrize("name", ALL)
def test_card_for_another_architecture_is_rejected(tmp_path: Path, name: str) -> None:
    _, base = _saved(tmp_path, name)
    _edit_card(base, lambda card: card["architecture"].update(name="vgg16" if name != "vgg16" else "lenet"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(base)
    with pytest.raises(CheckpointError, match="holds a"):
        load_model(base, expected_name=name)


def test_width_mismatch_is_a_shape_error(tmp_path: Path) -> None:
    _, base = _saved(tmp_path, "resnet18")
    _edit_card(base, lambda card: card["architecture"].update(width=2 * TINY))
    with pytest.raises(CheckpointError, match="shapes differ"):
        load_model(base)


def test_truncated_missing_and_corrupt_files(tmp_path: Path) -> None:
    _, base = _saved(tmp_path, "lenet")
    weights, card_path = weights_paths(base)
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])  # truncated: the parser refuses it
    with pytest.raises(CheckpointError, match="cannot read weights|not a safetensors"):
        load_model(base)
    weights.write_bytes(blob)
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "seed": 2}))  # the copy beside edited
    with pytest.raises(CheckpointError, match="differs from the card inside"):
        load_model(base)
    card_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(base)
    card_path.unlink()
    with pytest.raises(CheckpointError, match="card .* not found"):
        load_model(base)
    weights.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_model(base)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors|no advforensics card"):
        load_model(base)


def _edit_card(base: Path, edit) -> None:
    """Rewrite a model file's card (inside and beside) with the weights unchanged, as a forger could."""
    weights, _ = weights_paths(base)
    tensors, card = load_weights(weights, CARD_FORMAT, "model")
    edit(card)
    save_weights(weights, tensors, card, card_copy=True)


def test_save_never_silently_replaces_another_model(tmp_path: Path) -> None:
    model, base = _saved(tmp_path, "lenet")
    weights, _ = weights_paths(base)
    first = weights.read_bytes()
    for _ in range(5):  # same weights and card: fine, and byte-identical (a stable sha256)
        save_model(model, base, {"dataset": {"name": "test"}, "seed": 1})
        assert weights.read_bytes() == first
    other = create_model("lenet", width=TINY, seed=2)
    with pytest.raises(CheckpointError, match="different model"):
        save_model(other, base, {"seed": 2})
    assert torch.equal(load_model(base)[0](torch.ones(1, 1, 28, 28)), model(torch.ones(1, 1, 28, 28)))
    save_model(other, base, {"seed": 2}, overwrite=True)
    assert load_model(base)[1]["seed"] == 2
    # the suffix is optional
    assert load_model(str(base) + ".safetensors")[1]["seed"] == 2


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (1, 28, 28), (2, 1, 8, 8)])
def test_forward_names_the_expected_input_shape(shape: tuple[int, ...]) -> None:
    model = create_model("lenet").eval()
    with pytest.raises(InputValidationError, match=r"lenet expects images \(B, 1, 28, 28\)"):
        model(torch.rand(shape))
