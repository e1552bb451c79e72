"""`advforensics models ...` through click's CliRunner, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from advforensics.cli.main import cli


def test_models_list() -> None:
    result = CliRunner().invoke(cli, ["models", "list"])
    assert result.exit_code == 0, result.output
    for name in ("lenet", "resnet18", "resnet50", "vgg16", "vgg19", "inception_v3"):
        assert name in result.output
    rows = json.loads(CliRunner().invoke(cli, ["models", "list", "--json"]).output)
    assert {r["name"] for r in rows} >= {"resnet18"} and all(r["params_28x28x1"] > 0 for r in rows)


def test_train_eval_resume_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    out, report = tmp_path / "lenet", tmp_path / "train.json"
    args = ["models", "train", "--model", "lenet", "--data", "digits", "--epochs", "2", "--batch-size", "64",
            "--seed", "3", "--out", str(out), "--no-progress"]
    result = runner.invoke(cli, args + ["--json", str(report)])
    assert result.exit_code == 0, result.output
    measured = json.loads(report.read_text())
    assert measured["model"] == "lenet" and measured["epochs"] == 2 and measured["seed"] == 3
    assert 0.5 < measured["test_accuracy"] <= 1.0
    card = json.loads((tmp_path / "lenet.json").read_text())
    assert card["dataset"]["name"] == "digits" and len(card["dataset"]["sha256"]) == 64
    assert card["test_accuracy"] == measured["test_accuracy"] and card["seed"] == 3
    assert card["weights_sha256"] == measured["weights_sha256"]

    eval_json = tmp_path / "eval.json"
    result = runner.invoke(cli, ["models", "eval", "--weights", str(out), "--data", "digits",
                                 "--json", str(eval_json)])
    assert result.exit_code == 0, result.output
    assert json.loads(eval_json.read_text())["accuracy"] == measured["test_accuracy"]

    # an existing model is not replaced without --overwrite; --resume finishes from the state
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(cli, args + ["--resume", "--json", str(tmp_path / "resumed.json")])
    assert result.exit_code == 0, result.output
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["resumed_from_epoch"] == 2 and resumed["weights_sha256"] == measured["weights_sha256"]

    # tampered weights -> one clear error line, exit 2
    weights = tmp_path / "lenet.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x10
    weights.write_bytes(bytes(blob))
    result = runner.invoke(cli, ["models", "eval", "--weights", str(out), "--data", "digits"])
    assert result.exit_code == 2 and "sha256" in result.output and "Traceback" not in result.output

    # wrong data for the model, unknown model
    result = runner.invoke(cli, ["models", "train", "--model", "alexnet", "--data", "digits",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown model" in result.output
