"""`advforensics data ...` through click's CliRunner, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from advforensics.cli.main import cli
from advforensics.data import load_dataset
from advforensics.data.spec import CACHE_DIR_ENV, DATA_DIR_ENV


@pytest.fixture()
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    return CliRunner()


def test_data_list_shows_every_set(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["data", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "SHAPE", "CLASSES", "SPLITS", "SOURCE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) >= {"digits", "mnist-5k", "mnist", "fashion-mnist", "cifar10", "imagefolder"}
    assert rows["cifar10"][1] == "3x32x32" and rows["digits"][-1] == "embedded"
    assert rows["mnist-5k"][3] == "train:4000/test:1000"


def test_data_info_prints_and_writes_json(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "info.json"
    result = runner.invoke(cli, ["data", "info", "digits", "--split", "test", "--json", str(out)])
    assert result.exit_code == 0, result.output
    expected = load_dataset("digits", "test").info
    assert f"sha256:   {expected.sha256}" in result.output and "examples: 360" in result.output
    payload = json.loads(out.read_text())
    assert payload["sha256"] == expected.sha256 and payload["shape"] == [1, 8, 8]
    assert sum(payload["class_counts"].values()) == 360 and payload["num_examples"] == 360


def test_data_info_mnist_from_shared_dir_with_limit(runner: CliRunner, shared_data_dir: Path) -> None:
    result = runner.invoke(cli, ["data", "info", "mnist", "--split", "test", "--data-dir", str(shared_data_dir),
                                 "--limit", "500"])
    assert result.exit_code == 0, result.output
    assert "examples: 500" in result.output and "1 x 28 x 28" in result.output


def test_unknown_name_is_a_one_line_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["data", "info", "imagenet"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: unknown dataset 'imagenet'") and "mnist-5k" in lines[0]
    assert "Traceback" not in result.output


def test_missing_files_is_a_one_line_error_with_the_fix(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["data", "info", "mnist", "--data-dir", str(tmp_path / "empty")])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "train-images-idx3-ubyte.gz" in lines[0] and "--download" in lines[0]


def test_bad_split_and_limit_are_refused(runner: CliRunner) -> None:
    assert runner.invoke(cli, ["data", "info", "digits", "--split", "val"]).exit_code != 0
    assert runner.invoke(cli, ["data", "info", "digits", "--limit", "0"]).exit_code != 0


def test_help_texts_have_examples(runner: CliRunner) -> None:
    for args in (["data", "--help"], ["data", "list", "--help"], ["data", "info", "--help"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0 and "advforensics data" in result.output


def test_cli_help_does_not_import_torch() -> None:
    """`advforensics --help` and each group's --help stay instant: torch loads only when a command runs."""
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom advforensics.cli.main import cli\n"
            "for args in ([], ['data'], ['models'], ['attacks'], ['trace'], ['attribution'], ['trace', 'identify']):\n"
            "    result = CliRunner().invoke(cli, [*args, '--help'])\n"
            "    assert result.exit_code == 0, result.output\n"
            "print(sorted(m for m in ('torch', 'numpy', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
