"""`advforensics attacks list|run` through click's CliRunner, on a LeNet trained on digits for seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from advforensics.cli.main import cli
from conftest import train_digits_lenet


@pytest.fixture(scope="module")
def digits_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo LeNet for 1x8x8 digits trained for a few epochs and saved with its card."""
    from advforensics.data import load_dataset
    from advforensics.models import save_model

    train = load_dataset("digits", split="train")
    model = train_digits_lenet(train.images, train.labels, epochs=8)
    return save_model(model, tmp_path_factory.mktemp("models") / "lenet-digits", card={"data": "digits"})


def test_list_shows_every_attack_with_defaults() -> None:
    from advforensics.attacks import list_attacks

    result = CliRunner().invoke(cli, ["attacks", "list"])
    assert result.exit_code == 0, result.output
    for name in list_attacks():
        assert name in result.output
    assert "eps=0.0313725" in result.output and "white-box" in result.output
    rows = json.loads(CliRunner().invoke(cli, ["attacks", "list", "--json"]).output)
    assert {row["name"] for row in rows} == set(list_attacks())


def test_run_writes_npz_and_json(digits_weights: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "advs.npz", tmp_path / "run.json"
    args = ["attacks", "run", "--attack", "pgd-linf", "--weights", str(digits_weights), "--data", "digits",
            "--n", "40", "--threads", "1", "--param", "eps=51/255", "--param", "alpha=0.05", "--param", "steps=10", "--seed", "3",
            "--out", str(out), "--json", str(report)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "success rate" in result.output and "images/s" in result.output
    summary = json.loads(report.read_text())
    assert summary["n"] == 40 and summary["attack"]["eps"] == pytest.approx(51 / 255)
    assert summary["attack"]["seed"] == 3 and summary["success_rate"] > 0.5
    with np.load(out, allow_pickle=False) as data:
        assert data["x_adv"].shape == (40, 1, 8, 8) and data["x_adv"].dtype == np.float32
        assert data["labels"].shape == (40,)
        assert float(data["linf"].max()) <= 51 / 255 + 1e-6
        assert summary["success_rate"] == pytest.approx(float(data["success"].mean()))
        assert json.loads(str(data["params_json"]))["attack"] == "pgd-linf"
    # the same seed gives the same examples; an existing file is not replaced without --overwrite
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    rerun = CliRunner().invoke(cli, args[:-4] + ["--out", str(tmp_path / "b.npz")])
    with np.load(out) as first, np.load(tmp_path / "b.npz") as second:
        assert np.array_equal(first["x_adv"], second["x_adv"])
    assert rerun.exit_code == 0


def test_run_cw_reports_kappa_reached(digits_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "cw.npz"
    result = CliRunner().invoke(cli, ["attacks", "run", "--attack", "cw-l2", "--weights", str(digits_weights),
                                      "--data", "digits", "--n", "8", "--param", "kappa=2",
                                      "--param", "search_steps=2", "--param", "steps=30", "--param", "lr=0.1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "kappa reached" in result.output
    with np.load(out, allow_pickle=False) as data:
        assert data["extra_margin"].shape == (8,) and data["extra_reached"].dtype == np.bool_


@pytest.mark.parametrize(("extra", "message"), [
    (["--attack", "nope"], "unknown attack"),
    (["--attack", "fgsm", "--param", "eps=8"], "eps"),
    (["--attack", "fgsm", "--param", "eps"], "key=value"),
    (["--attack", "fgsm", "--data", "mnist-5k"], "expects"),
])
def test_run_user_errors_are_one_line(extra: list[str], message: str, digits_weights: Path) -> None:
    args = ["attacks", "run", "--weights", str(digits_weights), "--data", "digits", "--n", "4", *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_run_rejects_a_tampered_checkpoint(digits_weights: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(digits_weights.read_bytes()[:-10])
    (tmp_path / "bad.json").write_text(digits_weights.with_suffix(".json").read_text())
    result = CliRunner().invoke(cli, ["attacks", "run", "--attack", "fgsm", "--weights", str(bad), "--data", "digits"])
    assert result.exit_code == 2 and "Error" in result.output
