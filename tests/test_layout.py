"""The test tree mirrors src/: one folder per package of advforensics, each with tests, and nothing else."""

from __future__ import annotations

from pathlib import Path

import advforensics

TESTS = Path(__file__).resolve().parent
PACKAGES = sorted(p.parent.name for p in Path(advforensics.__file__).parent.glob("*/__init__.py"))


def test_every_package_has_a_test_folder_and_every_folder_a_package() -> None:
    folders = sorted(p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    assert folders == PACKAGES
    for name in PACKAGES:
        assert list((TESTS / name).glob("test_*.py")), f"tests/{name}/ holds no test file"


def test_test_file_names_are_unique() -> None:
    """pytest imports test files by their base name (rootdir-relative import mode)."""
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_top_level_tests_are_for_top_level_modules_or_the_whole_tool() -> None:
    modules = {p.stem for p in Path(advforensics.__file__).parent.glob("*.py")}
    cross_cutting = {"test_docs.py", "test_integrity.py", "test_python_api.py", "test_layout.py"}
    for test in TESTS.glob("test_*.py"):
        assert test.name in cross_cutting or test.stem.removeprefix("test_") in modules, test.name
