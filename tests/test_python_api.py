"""docs/python-api.md, executed: every Python block runs as written, and each job fits in five lines."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture()
def project(workspace: Path, tmp_path: Path, monkeypatch) -> Path:
    """A folder laid out as the page says: runs/c, keys/, runs/copies, runs/advs.npz, runs/mtaa.safetensors."""
    (tmp_path / "runs").mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(workspace / "zoo" / f"lenet{suffix}", tmp_path / "runs" / f"c{suffix}")
    shutil.copytree(workspace / "keys", tmp_path / "keys")
    shutil.copytree(workspace / "copies", tmp_path / "runs" / "copies")
    shutil.copy(workspace / "advs.npz", tmp_path / "runs" / "advs.npz")
    shutil.copy(workspace / "mtaa.safetensors", tmp_path / "runs" / "mtaa.safetensors")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _code_lines(block: str) -> int:
    return sum(1 for line in block.splitlines() if line.strip() and not line.strip().startswith("#"))


def test_the_page_has_the_four_jobs_and_each_of_the_three_is_at_most_five_lines() -> None:
    assert len(BLOCKS) == 4
    assert all(_code_lines(block) <= 5 for block in BLOCKS[:3]), [_code_lines(b) for b in BLOCKS[:3]]
    assert "make_copies" in BLOCKS[0] and "identify" in BLOCKS[1] and "Attributor" in BLOCKS[2]
    assert "investigate" in BLOCKS[3]


def test_every_block_runs_as_written(project: Path, capsys) -> None:
    namespaces = []
    for block in BLOCKS:
        namespace: dict = {}
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
        namespaces.append(namespace)
    make, trace, attribute, investigation = namespaces
    assert (project / "runs" / "new-copies" / "record.sig").is_file()
    assert make["record"].default_rule == "learned" and len(make["record"].copies) == 3
    report = trace["report"]
    assert report.source in (None, 0, 1, 2) and len(report.examples()) == len(trace["evidence"])
    assert attribute["answers"].records()[0]["attack"]
    assert (project / "runs" / "investigation" / "report.html").is_file()
    assert "examined" in investigation["result"].verdict
    assert "examined" in capsys.readouterr().out
