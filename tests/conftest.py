"""Shared fixtures: the data copies beside the project and a tiny classifier trained in seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# One thread: tiny test models run faster single-threaded, and the CI machine has only 2 cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data (MNIST IDX files and the CIFAR-10 JPEG zip); skipped where absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data directory not found at {SHARED_DATA}")
    return SHARED_DATA


class TinyDigitsNet(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits; input (B, 1, 8, 8) in [0, 1], output logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.float()))


@pytest.fixture(scope="session")
def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (1797, 1, 8, 8) images in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    return images, labels


@pytest.fixture(scope="session")
def tiny_classifier(digits_data: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """TinyDigitsNet trained for a few seconds (about 97% train accuracy), in eval mode."""
    images, labels = digits_data
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyDigitsNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        order = torch.randperm(len(images), generator=generator)
        for batch in order.split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimiser.step()
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def mlp_victim(digits_data: tuple[torch.Tensor, torch.Tensor]):
    """Factory: (hidden, seed) -> a small MLP digit classifier trained full-batch in about a second."""
    images, labels = digits_data

    def make(hidden: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimiser.step()
        return model.eval().requires_grad_(False)

    return make


def train_digits_lenet(images: torch.Tensor, labels: torch.Tensor, epochs: int) -> nn.Module:
    """A zoo LeNet for 1x8x8 digits (saveable with the project's checkpoints), seeded, in eval mode."""
    from advforensics.models import create_model

    torch.manual_seed(0)
    model = create_model("lenet", num_classes=10, in_channels=1, image_size=8, seed=0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=gen).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimiser.step()
    return model.eval()


@pytest.fixture(scope="session")
def zoo_classifier(digits_data: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
    """The digits LeNet trained 6 epochs on all digits: tracing and the peer scheme build their copies from it."""
    return train_digits_lenet(*digits_data, epochs=6)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    """Valid artifacts made by the real commands, as a user's project holds them (all tiny: digits 8x8):
    zoo/lenet; keys/seller(.pub); copies/ (3 copies, signed, calibrated, with the learned rule; no ONNX);
    advs.npz (HopSkipJump on copy 1); corpus/ (FGSM at two strengths); mtaa.safetensors. Tests read it and
    write elsewhere."""
    import json

    from click.testing import CliRunner

    from advforensics.cli.main import cli

    root = tmp_path_factory.mktemp("workspace")

    def ok(args: list[str]) -> None:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output

    ok(["models", "train", "--model", "lenet", "--data", "digits", "--epochs", "2", "--no-progress",
        "--out", str(root / "zoo" / "lenet")])
    ok(["trace", "keygen", "--out", str(root / "keys" / "seller")])
    ok(["trace", "separate", "--classifier", str(root / "zoo" / "lenet"), "--copies", "3", "--no-onnx",
        "--calibrate-data", "digits", "--calibration-size", "100", "--fit-size", "300",
        "--signing-key", str(root / "keys" / "seller"), "--out", str(root / "copies")])
    ok(["attacks", "run", "--attack", "hopskipjump", "--copies", str(root / "copies"), "--copy", "1", "--data",
        "digits", "--n", "12", "--param", "max_iter=10", "--param", "max_eval=300", "--out", str(root / "advs.npz")])
    (root / "grid.json").write_text(json.dumps({"attacks": [{"name": "fgsm", "values": [60, 120]}]}))
    ok(["attribution", "corpus", "--data", "digits", "--limit", "60", "--victims", str(root / "zoo"), "--grid",
        str(root / "grid.json"), "--no-progress", "--out", str(root / "corpus")])
    ok(["attribution", "train", "--corpus", str(root / "corpus"), "--epochs", "1", "--width", "4", "--max-steps",
        "2", "--no-progress", "--out", str(root / "mtaa.safetensors")])
    return root


@pytest.fixture(scope="session")
def attribution_workdir(tmp_path_factory, digits_data):
    """Two zoo LeNets (different widths) trained briefly on digits, saved with cards, and a tiny grid."""
    import json

    from advforensics.models import create_model, save_model

    root = tmp_path_factory.mktemp("attr-cli")
    images, labels = digits_data
    for i, width in enumerate((0.5, 1.0)):
        model = create_model("lenet", num_classes=10, in_channels=1, image_size=8, width=width, seed=i)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(3):
            for batch in torch.randperm(len(images)).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
                opt.step()
        save_model(model.eval(), root / "zoo" / f"lenet-w{i}", {"data": "digits"})
    grid = {"attacks": [{"name": "fgsm", "values": [40, 120]},
                        {"name": "pgd-linf", "values": [40, 120], "params": {"steps": 3, "alpha_ratio": 0.5}}]}
    (root / "grid.json").write_text(json.dumps(grid))
    return root


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread (the attack tests): query attacks make thousands of tiny forward passes, each
    much slower on two threads of a loaded machine (docs/attacks.md)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
