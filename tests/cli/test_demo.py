"""The README's demo command, run through the CLI as a user would."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from advforensics.cli.main import cli

REPO = Path(__file__).resolve().parents[2]


def test_readme_quick_start_names_the_make_targets_that_exist() -> None:
    readme = (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make demo" in readme and "make test" in readme
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in ci


def test_demo_tracing_half_names_the_attacked_copy(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--examples", "3", "--skip-attribution"])
    assert result.exit_code == 0, result.output
    trace = json.loads((out / "trace.json").read_text())
    assert trace["num_examples"] >= 2 and trace["num_copies"] == 5
    assert trace["rule"] == "learned" and trace["one_source"]
    assert trace["groups"][0]["source"] == 3  # the demo's attacker holds copy 3
    assert "ground truth: the examples were crafted on copy 3" in result.output
    assert trace["record_signature"]["verified"]  # the demo signs its record and identify checks it
    inv = CliRunner().invoke(cli, ["investigate", str(out / "advs.npz"), "--record", str(out / "copies"),
                                   "--seller-key", str(out / "keys" / "seller.pub"), "--out", str(tmp_path / "inv")])
    assert inv.exit_code == 0, inv.output
    summary = json.loads((tmp_path / "inv" / "report.json").read_text())["summary"]
    assert summary["traced_copy"] == 3  # accused or undecided: 3 examples on a 1,000-image fit


@pytest.mark.slow
def test_full_demo_runs_both_halves(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report").is_dir() and (out / "mtaa.safetensors").is_file()
    assert (out / "report-fx").is_dir() and (out / "mtaa-fx.safetensors").is_file()
    assert "attribution predict" in result.output and "demo finished" in result.output
    # the README's investigate line, on this demo's directory
    line = next(line for line in (REPO / "README.md").read_text().splitlines() if " investigate " in line
                and line.startswith(".venv/bin/advforensics"))
    args = shlex.split(line.replace("runs/demo", str(out)).replace("runs/investigation", str(tmp_path / "inv")))[1:]
    inv = CliRunner().invoke(cli, args)
    assert inv.exit_code == 0, inv.output
    payload = json.loads((tmp_path / "inv" / "report.json").read_text())
    assert payload["summary"]["traced_copy"] == 3 and all(e["attribution"] for e in payload["examples"])
    assert (tmp_path / "inv" / "report.html").stat().st_size > 0


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "advforensics did not write it" in result.output
    assert (tmp_path / "precious.txt").read_text() == "keep me"
