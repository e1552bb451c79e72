"""A served record: the workspace's digits LeNet separated into 3 copies with ONNX files, two buyers."""

from __future__ import annotations

import pytest
from serving_helpers import Served, make_keys, run_ok


@pytest.fixture(scope="session")
def served(workspace, tmp_path_factory) -> Served:
    root = tmp_path_factory.mktemp("served")
    run_ok(["trace", "separate", "--classifier", str(workspace / "zoo" / "lenet"), "--copies", "3", "--fit-size", "0",
            "--out", str(root / "copies")])
    keys = make_keys(root / "copies", root / "keys.json", {"alice": 1, "bob": 2})
    return Served(root / "copies", root / "keys.json", keys["alice"], keys["bob"])


@pytest.fixture(scope="session")
def families_file(served, tmp_path_factory):
    """`queries families` on copy 1 of the served record, a few simulated sequences per family (digits)."""
    path = tmp_path_factory.mktemp("families") / "families.json"
    run_ok(["queries", "families", "--record", str(served.record), "--copy", "1", "--data", "digits",
            "--per-family", "3", "--out", str(path)])
    return path
