"""`advforensics attribution` through click's CliRunner on a tiny grid with zoo victims."""

from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner

from advforensics.cli.main import cli


def _run(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result


def test_corpus_train_evaluate_predict_round_trip(attribution_workdir):
    root = attribution_workdir
    r = _run(["attribution", "corpus", "--data", "digits", "--limit", "150", "--victims", str(root / "zoo"),
              "--grid", str(root / "grid.json"), "--out", str(root / "corpus"), "--no-progress",
              "--json", str(root / "corpus.json")])
    assert r.exit_code == 0, r.output
    summary = json.loads((root / "corpus.json").read_text())
    assert summary["n_examples"] > 0 and len(summary["cells"]) == 8
    # running again without --resume refuses; with --resume reuses every unit
    r = _run(["attribution", "corpus", "--data", "digits", "--limit", "150", "--victims", str(root / "zoo"),
              "--grid", str(root / "grid.json"), "--out", str(root / "corpus"), "--no-progress"])
    assert r.exit_code == 2 and "resume" in r.output
    r = _run(["attribution", "corpus", "--data", "digits", "--limit", "150", "--victims", str(root / "zoo"),
              "--grid", str(root / "grid.json"), "--out", str(root / "corpus"), "--no-progress", "--resume"])
    assert r.exit_code == 0 and "0 generated" in r.output
    model = root / "mtaa.safetensors"
    r = _run(["attribution", "train", "--corpus", str(root / "corpus"), "--out", str(model), "--epochs", "1",
              "--width", "4", "--max-steps", "4", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert model.exists() and model.with_suffix(".json").exists()
    r = _run(["attribution", "evaluate", "--corpus", str(root / "corpus"), "--model", str(model), "--out",
              str(root / "report"), "--json", str(root / "eval.json")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((root / "eval.json").read_text())
    assert {"attack_accuracy", "victim_accuracy", "rmse", "flops_per_image"} <= set(metrics)
    assert (root / "report" / "attack_confusion.png").exists()
    # Delta_MTL against the three single-task models
    singles = []
    for task in ("attack", "victim", "hyper"):
        singles += ["--single-task", str(root / f"st-{task}.safetensors")]
        r = _run(["attribution", "train", "--corpus", str(root / "corpus"), "--out", singles[-1], "--model",
                  "single-task", "--task", task, "--epochs", "1", "--width", "4", "--max-steps", "2", "--no-progress"])
        assert r.exit_code == 0, r.output
    r = _run(["attribution", "evaluate", "--corpus", str(root / "corpus"), "--model", str(model), "--out",
              str(root / "report-mtl"), *singles, "--json", str(root / "eval-mtl.json")])
    assert r.exit_code == 0, r.output
    assert isinstance(json.loads((root / "eval-mtl.json").read_text())["delta_mtl"], float)
    # predict from an npz of evidence, and the size check
    from advforensics.attribution.corpus import load_corpus

    corpus = load_corpus(root / "corpus")
    np.savez(root / "ev.npz", images=corpus.images[:3])
    r = _run(["attribution", "predict", "--model", str(model), str(root / "ev.npz"), "--as-json"])
    assert r.exit_code == 0, r.output
    preds = json.loads(r.output)
    assert len(preds) == 3 and preds[0]["attack"] in ("fgsm", "pgd-linf")
    assert preds[0]["victim"] == "lenet" and preds[0]["row"] == 0  # the architecture, and the row it answers
    np.savez(root / "big.npz", images=np.zeros((2, 1, 28, 28), np.uint8))
    r = _run(["attribution", "predict", "--model", str(model), str(root / "big.npz")])
    assert r.exit_code == 2 and "the model takes (1, 8, 8)" in r.output
    # an image file
    from PIL import Image

    Image.fromarray(corpus.images[0, 0]).save(root / "one.png")
    r = _run(["attribution", "predict", "--model", str(model), str(root / "one.png")])
    assert r.exit_code == 0 and "attack" in r.output
    # training again onto the same file is refused
    r = _run(["attribution", "train", "--corpus", str(root / "corpus"), "--out", str(model), "--no-progress"])
    assert r.exit_code == 2
    # a scalability-table model: one attack on one victim; evaluate picks the same subset from the card
    small = root / "mtaa-1x1.safetensors"
    r = _run(["attribution", "train", "--corpus", str(root / "corpus"), "--out", str(small), "--epochs", "1",
              "--width", "4", "--max-steps", "2", "--no-progress", "--attacks", "pgd-linf", "--only-victims", "lenet-w1"])
    assert r.exit_code == 0, r.output
    r = _run(["attribution", "evaluate", "--corpus", str(root / "corpus"), "--model", str(small), "--out",
              str(root / "report-1x1"), "--json", str(root / "eval-1x1.json")])
    assert r.exit_code == 0, r.output
    sub = json.loads((root / "eval-1x1.json").read_text())
    # the victim label is the architecture: both lenets are one class
    assert sub["attack_names"] == ["pgd-linf"] and sub["victim_names"] == ["lenet"] and sub["n"] < metrics["n"]
    r = _run(["attribution", "train", "--corpus", str(root / "corpus"), "--out", str(root / "x.safetensors"),
              "--attacks", "cw-l2", "--no-progress"])
    assert r.exit_code == 2 and "cw-l2" in r.output and not (root / "x.safetensors").exists()


def test_cli_errors(attribution_workdir, tmp_path):
    (tmp_path / "empty").mkdir()
    r = _run(["attribution", "corpus", "--data", "digits", "--victims", str(tmp_path / "empty"), "--out", str(tmp_path / "c"),
              "--grid", "nonsense"])
    assert r.exit_code == 2 and "grid" in r.output
    r = _run(["attribution", "evaluate", "--corpus", str(tmp_path / "empty"), "--model", str(tmp_path / "m.safetensors"),
              "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "manifest" in r.output
    if not torch.cuda.is_available():
        r = _run(["attribution", "corpus", "--data", "digits", "--victims", str(attribution_workdir / "zoo"),
                  "--grid", str(attribution_workdir / "grid.json"), "--out", str(tmp_path / "gpu"), "--device", "cuda"])
        assert r.exit_code == 2 and "CUDA" in r.output and not (tmp_path / "gpu").exists()
    r = _run(["attribution", "--help"])
    assert r.exit_code == 0 and "Example" in r.output


def test_side_features_train_evaluate_predict(attribution_workdir, tmp_path):
    """--histogram --probe-victims: the model file carries the victims; other weights are refused."""
    import shutil

    from advforensics.attribution.corpus import load_corpus
    from advforensics.models import create_model, save_model

    root = attribution_workdir
    corpus_dir = tmp_path / "corpus"
    r = _run(["attribution", "corpus", "--data", "digits", "--limit", "60", "--victims", str(root / "zoo"),
              "--grid", str(root / "grid.json"), "--out", str(corpus_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    model = tmp_path / "fx.safetensors"
    r = _run(["attribution", "train", "--corpus", str(corpus_dir), "--out", str(model), "--epochs", "1",
              "--width", "4", "--max-steps", "3", "--no-pe", "--histogram", "--probe-victims", str(root / "zoo"),
              "--hyper-per-attack",
              "--no-progress"])
    assert r.exit_code == 0, r.output
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["config"]["histogram"] and card["config"]["probe_victims"] == ["lenet-w0", "lenet-w1"]
    assert card["config"]["hyper_per_attack"]
    assert set(card["probe_weights_sha256"]) == {"lenet-w0", "lenet-w1"}
    assert card["config"]["probe_victim_classes"] == [0, 0]  # both are class "lenet"
    r = _run(["attribution", "evaluate", "--corpus", str(corpus_dir), "--model", str(model), "--out",
              str(tmp_path / "report"), "--json", str(tmp_path / "eval.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "eval.json").read_text())["n"] > 0
    np.savez(tmp_path / "ev.npz", images=load_corpus(corpus_dir).images[:2])
    shutil.rmtree(tmp_path / "report")  # predict needs nothing but the model file
    r = _run(["attribution", "predict", "--model", str(model), str(tmp_path / "ev.npz"), "--as-json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)) == 2
    # a scalability subset probes only its own victims, out of the whole zoo directory
    subset_model = tmp_path / "fx-1.safetensors"
    r = _run(["attribution", "train", "--corpus", str(corpus_dir), "--out", str(subset_model), "--epochs", "1",
              "--width", "4", "--max-steps", "2", "--no-pe", "--probe-victims", str(root / "zoo"),
              "--only-victims", "lenet-w1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads(subset_model.with_suffix(".json").read_text())["config"]["probe_victims"] == ["lenet-w1"]
    # a victim with other weights than the corpus was made on
    other = tmp_path / "other-zoo"
    shutil.copytree(root / "zoo", other)
    save_model(create_model("lenet", image_size=8, width=1.0, seed=7), other / "lenet-w1", {"data": "digits"},
               overwrite=True)
    r = _run(["attribution", "train", "--corpus", str(corpus_dir), "--out", str(tmp_path / "bad.safetensors"),
              "--no-pe", "--probe-victims", str(other), "--no-progress"])
    assert r.exit_code == 2 and "not the model the corpus was made on" in r.output
    assert not (tmp_path / "bad.safetensors").exists()
