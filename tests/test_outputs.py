"""The output guard (advforensics/outputs.py and the CLI's ForensicsCommand): nothing that exists is
replaced unless the tool wrote it and nobody changed it since, or --overwrite is given; inputs never."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from advforensics.cli.common import ForensicsCommand
from advforensics.cli.options import OutputDir, OutputFile
from advforensics.cli.main import cli
from advforensics.errors import InputValidationError
from advforensics.outputs import OUTPUTS_FILE, OutputDirectory, check_not_input
from advforensics.utils import atomic_target


def _claimed(path: Path) -> OutputDirectory:
    directory = OutputDirectory(path, "attribution evaluate")
    directory.claim(overwrite=False)
    return directory


def test_a_finished_directory_may_be_rewritten_only_while_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "report"
    directory = _claimed(out)
    (out / "report.md").write_text("# figures\n")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    directory.seal()
    _claimed(out).seal()  # unchanged: the same command may write again
    (out / "report.md").write_text("# figures\nmy notes\n")
    with pytest.raises(InputValidationError, match="report.md changed since advforensics wrote it"):
        _claimed(out)
    (out / "report.md").write_text("# figures\n")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputValidationError, match="notes.txt was not written by advforensics"):
        _claimed(out)
    with pytest.raises(InputValidationError, match="holds the output of `advforensics attribution evaluate`"):
        OutputDirectory(out, "attacks run").claim(overwrite=False)
    OutputDirectory(out, "attribution evaluate").claim(overwrite=True)  # the user said so
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces outputs, deletes nothing


def test_an_unfinished_run_resumes_and_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    _claimed(out)  # never sealed: the run was interrupted
    (out / "cache.npz").write_bytes(b"partial")
    _claimed(out)  # its files are its own
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(InputValidationError, match="advforensics did not write it"):
        _claimed(foreign)
    assert not (foreign / OUTPUTS_FILE).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputValidationError, match="not a directory"):
        _claimed(tmp_path / "file")


def test_remove_owned_deletes_only_unchanged_files_the_tool_wrote(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    directory = _claimed(out)
    (out / "sub").mkdir()
    (out / "sub" / "weights.bin").write_bytes(b"w")
    (out / "trace.json").write_text("{}")
    directory.seal()
    (out / "trace.json").write_text('{"edited": true}')
    (out / "sub" / "mine.txt").write_text("user")
    removed = OutputDirectory(out, "attribution evaluate").remove_owned()
    assert removed == ["sub/weights.bin"]
    assert (out / "trace.json").read_text() == '{"edited": true}' and (out / "sub" / "mine.txt").exists()


def test_a_failed_run_that_wrote_nothing_leaves_no_trace(tmp_path: Path) -> None:
    new = tmp_path / "new"
    _claimed(new).abandon()
    assert not new.exists()
    old = tmp_path / "old"
    directory = _claimed(old)
    (old / "a.txt").write_text("a")
    directory.seal()
    before = (old / OUTPUTS_FILE).read_bytes()
    _claimed(old).abandon()
    assert (old / OUTPUTS_FILE).read_bytes() == before  # still sealed as finished


def test_outputs_never_name_an_input(tmp_path: Path) -> None:
    record = tmp_path / "copies"
    record.mkdir()
    (record / "record.json").write_text("{}")
    evidence = tmp_path / "advs.npz"
    evidence.write_bytes(b"x")
    for output in (evidence, record / "record.json", record / "new.json", record):
        with pytest.raises(InputValidationError, match="input"):
            check_not_input(output, [record, evidence])
    check_not_input(tmp_path / "trace.json", [record, evidence])  # a sibling is fine


def test_atomic_target_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_target(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_target(target) as tmp:
        assert tmp.suffix == ".png"  # matplotlib picks the format by it
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def _all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _all_commands(command, f"{prefix}{name} ")
        else:
            found.append((prefix + name, command))
    return found


def test_every_command_is_behind_the_boundary_and_every_writer_has_overwrite() -> None:
    commands = _all_commands(cli)
    assert len(commands) > 15
    for name, command in commands:
        assert isinstance(command, ForensicsCommand), name
        replaceable = [p for p in command.params if isinstance(p.type, OutputDir)
                       or (isinstance(p.type, OutputFile) and p.type.replaceable)]
        if replaceable:
            assert any(p.name == "overwrite" for p in command.params), name


@pytest.mark.parametrize("command", [["models", "train", "--model", "lenet", "--data", "digits", "--epochs", "1"],
                                     ["attribution", "train", "--corpus", "no-corpus"]])
@pytest.mark.parametrize("out", ["w", "w.safetensors"])
def test_json_may_not_name_the_card_copy_of_a_weights_file(tmp_path: Path, command: list[str], out: str) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, [*command, "--out", str(tmp_path / out), "--json", str(tmp_path / "w.json")])
    assert result.exit_code == 2 and "--out's card copy name the same path" in result.output
    assert not list(tmp_path.iterdir())
