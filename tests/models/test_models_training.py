"""Training: it learns, it is deterministic, and an interrupted run resumes to the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import advforensics.models.training as training
from advforensics.models.serialization import STATE_FORMAT
from advforensics.weights import read_card
from advforensics.data import load_dataset
from advforensics.errors import CheckpointError, InputValidationError
from advforensics.models import (
    TrainConfig, create_model, default_train_config, evaluate, list_models, predict, train_model,
)


@pytest.fixture(scope="module")
def digits() -> tuple:
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def _small(config: TrainConfig | None = None) -> TrainConfig:
    return config or TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0)


def test_training_improves_accuracy(digits: tuple) -> None:
    train, test = digits
    model = create_model("lenet", image_size=8, seed=0)
    before = evaluate(model, test.images, test.labels)
    result = train_model(model, train, test, TrainConfig(epochs=3, batch_size=32, lr=5e-3), progress=False)
    assert before < 0.3
    assert result.test_accuracy == pytest.approx(evaluate(model, test.images, test.labels))
    assert result.test_accuracy > 0.85
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert not model.training


def test_same_seed_same_weights(digits: tuple) -> None:
    train, _ = digits
    states = []
    for _ in range(2):
        model = create_model("resnet18", image_size=8, width=0.0625, seed=5)
        train_model(model, train, None, TrainConfig(epochs=1, batch_size=128, seed=5), progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, digits: tuple,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = digits
    config = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=1)  # dropout + OneCycle + AdamW
    reference = create_model("lenet", image_size=8, seed=1)
    expected = train_model(reference, train, test, config, progress=False)

    state = tmp_path / "run.train-state"
    real_save = training.save_state

    def save_then_crash(path: Path, payload: dict) -> None:
        real_save(path, payload)
        if payload["epoch"] == 1:
            raise _Interrupt  # the process dies right after epoch 1's checkpoint

    monkeypatch.setattr(training, "save_state", save_then_crash)
    with pytest.raises(_Interrupt):
        train_model(create_model("lenet", image_size=8, seed=1), train, test, config, state, progress=False)
    monkeypatch.setattr(training, "save_state", real_save)

    torch.manual_seed(1234)  # a different global RNG state must not matter: it is restored
    resumed_model = create_model("lenet", image_size=8, seed=99)  # weights come from the state
    resumed = train_model(resumed_model, train, test, config, state, progress=False)
    assert resumed.resumed_from_epoch == 1
    assert resumed.test_accuracy == expected.test_accuracy
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in expected.history]
    ref_state, new_state = reference.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)
    # the state file is safetensors with a JSON card, no pickle
    assert read_card(state.with_name(state.name + ".safetensors"), STATE_FORMAT, "training state")["state"]["epoch"] == 3


def test_state_of_another_run_or_tampered_state_is_refused(tmp_path: Path, digits: tuple) -> None:
    train, _ = digits
    state = tmp_path / "s"
    train_model(create_model("lenet", image_size=8, seed=0), train, None,
                TrainConfig(epochs=1, batch_size=256), state, progress=False)
    with pytest.raises(CheckpointError, match="another model"):
        train_model(create_model("lenet", image_size=8, seed=0), train, None,
                    TrainConfig(epochs=2, batch_size=256), state, progress=False)
    tensors = state.with_name("s.safetensors")
    blob = bytearray(tensors.read_bytes())
    blob[-1] ^= 0xFF
    tensors.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="tampered"):
        train_model(create_model("lenet", image_size=8, seed=0), train, None,
                    TrainConfig(epochs=1, batch_size=256), state, progress=False)


def test_bad_training_input_fails_clearly(digits: tuple) -> None:
    train, _ = digits
    with pytest.raises(InputValidationError, match="channels"):
        train_model(create_model("lenet", in_channels=3, image_size=8), train, None, _small(), progress=False)
    with pytest.raises(InputValidationError, match="lr"):
        train_model(create_model("lenet", image_size=8), train, None, TrainConfig(lr=-1.0), progress=False)
    with pytest.raises(InputValidationError, match="optimizer"):
        TrainConfig(optimizer="lbfgs").validate()


def test_evaluate_and_predict_agree(digits: tuple) -> None:
    _, test = digits
    model = create_model("lenet", image_size=8, seed=0)
    manual = (model.eval()(test.images).argmax(1) == test.labels).float().mean().item()
    assert evaluate(model, test.images, test.labels, batch_size=7) == pytest.approx(manual)
    assert predict(model, test.images.numpy()).shape == (len(test.labels),)


def test_random_shift_matches_scipy_translation() -> None:
    """Each image is translated by its own integer offset with zero fill, as scipy.ndimage.shift
    (order 0) does; the offsets come from the generator, so the augmentation is reproducible."""
    from scipy import ndimage

    x = torch.rand(16, 2, 9, 7)
    out = training.random_shift(x, 2, torch.Generator().manual_seed(3))
    again = training.random_shift(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(out, again) and out.shape == x.shape
    # the same draws: top-left corners in the padded image, i.e. a translation by 2 - corner
    corners = torch.randint(0, 5, (2, 16), generator=torch.Generator().manual_seed(3))
    for i in range(16):
        move = (0, 2 - int(corners[0, i]), 2 - int(corners[1, i]))
        expected = ndimage.shift(x[i].numpy(), move, order=0, mode="constant", cval=0.0)
        assert torch.equal(out[i], torch.from_numpy(expected))
    assert len({tuple(corners[:, i].tolist()) for i in range(16)}) > 1  # per-image offsets
    assert training.random_shift(x, 0, torch.Generator()) is x
    with pytest.raises(InputValidationError, match="shift"):
        TrainConfig(shift=-1).validate()


def test_every_model_has_documented_defaults() -> None:
    for name in list_models():
        config = default_train_config(name)
        config.validate()
        assert name in training.DEFAULT_TRAIN_CONFIGS
    assert default_train_config("resnet18", epochs=1, lr=None).epochs == 1


def test_random_flip_mirrors_about_half_reproducibly() -> None:
    x = torch.rand(200, 3, 4, 5)
    out = training.random_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, training.random_flip(x, torch.Generator().manual_seed(1)))
    mirrored = torch.tensor([torch.equal(out[i], x[i].flip(2)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(len(x))])
    assert bool((mirrored | kept).all()) and not bool((mirrored & kept).any())  # each image one or the other
    assert 70 < int(mirrored.sum()) < 130  # p = 1/2 (binomial sd ~7)
