"""The attribution study (`attribution experiment`, studies/attribution.py): corpus, models, errors and
the tables on digits, then a resumed rerun."""

from __future__ import annotations

import json

from click.testing import CliRunner

from advforensics.cli.main import cli


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_experiment_runs_every_stage_then_resumes(attribution_workdir, tmp_path):
    """The attribution study: corpus, MTAA + the single-task baselines + the control, errors, the tables;
    a rerun reuses the corpus and every model."""
    out = tmp_path / "exp"
    args = ["attribution", "experiment", "--victims", str(attribution_workdir / "zoo"), "--data", "digits", "--limit", "60",
            "--grid", str(attribution_workdir / "grid.json"), "--models", "mtaa,st-attack,st-victim,st-hyper,control",
            "--epochs", "1", "--width", "4", "--max-steps", "3", "--out", str(out), "--json", str(tmp_path / "e.json")]
    r = _run(args)
    assert r.exit_code == 0, r.output
    results = json.loads((out / "results.json").read_text())
    assert results["study"] == "attribution" and results["corpus"]["examples"] > 0
    assert set(results["train"]) == {"mtaa", "st-attack", "st-victim", "st-hyper", "control"}
    assert 0.0 <= results["train"]["mtaa"]["attack_accuracy"] <= 1.0
    assert set(results["errors"]["mtaa"]) == {"fgsm", "pgd-linf"}
    tables = (out / "tables.md").read_text()
    assert "Delta_MTL(mtaa vs single-task)" in tables and "fgsm: success (%)" in tables
    for name in ("mtaa", "control"):
        assert (out / "models" / f"{name}.safetensors").is_file() and (out / "metrics" / f"{name}.json").is_file()
    weights = (out / "models" / "mtaa.safetensors").read_bytes()
    r = _run(args + ["--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "models" / "mtaa.safetensors").read_bytes() == weights  # reused, not retrained
    assert json.loads((out / "results.json").read_text())["corpus"]["generated"] == 0
    r = _run(args[:-2] + ["--models", "mtaa@9x9", "--json", str(tmp_path / "f.json")])
    assert r.exit_code == 2 and "unknown model 'mtaa@9x9'" in r.output
