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
