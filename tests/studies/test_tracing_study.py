"""The tracing study (`trace experiment`, studies/tracing.py): every stage on digits, resumed, refused
when the cache was made with other settings."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from advforensics.cli.main import cli
from advforensics.tracing.tracer import create_tracer, save_tracer


def test_cli_trace_experiment_runs_every_table_and_resumes(tmp_path: Path, zoo_classifier) -> None:
    from advforensics.models import save_model

    save_model(zoo_classifier, tmp_path / "c", card={"data": "digits"})
    out = tmp_path / "exp"
    args = ["trace", "experiment", "--classifier", str(tmp_path / "c"), "--data", "digits", "--attacks",
            "hopskipjump", "--copies", "3", "--per-source", "6", "--copy-counts", "2,4", "--scaling-per-source", "2",
            "--control-examples", "6", "--calibration-images", "60", "--fit-images", "700", "--clean-alphas", "0.15",
            "--param", "hopskipjump.max_iter=5", "--param", "hopskipjump.max_eval=200", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    row = results["tracing"][0]
    assert row["successful"] >= 12 and row["attacked"] == 18
    # every kept example fools its own copy (Table 5's diagonal)
    assert all(row["transfer"][i][i] == 1.0 for i in range(3))
    # hard-label examples end on their copy's boundary: proximity names the source far above chance (1/3)
    assert row["rules"]["proximity"]["accuracy"] > 0.8
    assert [r["copies"] for r in results["scaling"]] == [2, 4]
    assert {r["control"] for r in results["controls"]} == {"other tracer", "C alone"}
    tables = (out / "tables.md").read_text()
    assert results["collusion"][0]["successful"] >= 4
    for heading in ("Table 1", "Table 2", "Table 3", "Field", "Table 5", "Table 6", "Fig. 4b", "Controls",
                    "Robustness cost"):
        assert heading in tables
    field_rows = {r["regime"]: r for r in results["field"]}
    assert set(field_rows) == {"as crafted", "transfer-1", "transfer-all", "low-pass", "png", "jpeg:90", "jpeg:75",
                               "resize:0.75", "noise:2"}
    assert field_rows["as crafted"]["n"] == row["successful"]
    assert set(field_rows["as crafted"]["rules"]) == {"dol", "margin", "proximity", "learned"}
    assert (out / "learned_rule.json").is_file()
    assert (out / "plots" / "fig4b_accuracy_vs_copies.png").is_file()
    peer = results["peer"]
    assert min(peer["clean_accuracy"]) > 0.8 and peer["rows"][0]["successful"] >= 12
    assert peer["rows"][0]["accuracy"] > 0.5  # chance is 1/3
    assert "Peer scheme" in tables and (out / "peer_copies.safetensors").is_file()
    assert (out / "plots" / "fig4a_hopskipjump_a0.15.png").is_file()
    # a rerun reuses every cached attack set and reproduces the tables
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["tracing"][0]["rules"] == row["rules"]
    assert rerun["peer"] == peer  # the peer copies are reloaded, not fine-tuned again
    assert rerun["field"] == results["field"]  # the learned rule is reloaded, not fitted again
    # other attack settings in the same directory: a clear error, the cache untouched
    before = (out / "examples" / "hopskipjump_a0.15_m3.npz").read_bytes()
    changed = CliRunner().invoke(cli, [*args[:-2], "--param", "hopskipjump.max_iter=6", "--out", str(out)])
    assert changed.exit_code == 2 and "other settings" in changed.output
    assert (out / "examples" / "hopskipjump_a0.15_m3.npz").read_bytes() == before
    bad = CliRunner().invoke(cli, [*args[:6], "--attacks", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown attack" in bad.output
    only = CliRunner().invoke(cli, [*args[:6], "--stages", "clean", "--clean-alphas", "0.1",
                                    "--out", str(tmp_path / "clean-only")])
    assert only.exit_code == 0, only.output
    assert set(json.loads((tmp_path / "clean-only" / "results.json").read_text())) >= {"clean", "config"}
    assert "tracing" not in json.loads((tmp_path / "clean-only" / "results.json").read_text())
    wrong = CliRunner().invoke(cli, [*args[:6], "--stages", "everything", "--out", str(tmp_path / "y")])
    assert wrong.exit_code == 2 and "stages must be" in wrong.output
    save_tracer(create_tracer("random", image_size=16, seed=1), tmp_path / "t16.safetensors")
    misfit = CliRunner().invoke(cli, [*args[:6], "--tracer", str(tmp_path / "t16.safetensors"), "--out",
                                      str(tmp_path / "z")])
    assert misfit.exit_code == 2 and "tracer takes" in misfit.output
    # a saved tracer of the right shape is used, and the cache made with the random tracer is not reused
    save_tracer(create_tracer("random", image_size=8, length_scale=1.0, seed=7), tmp_path / "t8.safetensors")
    other = CliRunner().invoke(cli, [*args, "--tracer", str(tmp_path / "t8.safetensors")])
    assert other.exit_code == 2 and "other settings" in other.output
