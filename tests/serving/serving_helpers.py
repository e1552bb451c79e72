"""Helpers of the serving tests: the served record's paths and keys, and the CLI calls they make."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from advforensics.cli.main import cli


@dataclass(frozen=True)
class Served:
    record: Path
    keys: Path
    alice: str  # copy 1
    bob: str  # copy 2


def run_ok(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output + "".join(traceback.format_exception(*result.exc_info or (None,)))
    return result.output


def make_keys(record: Path, keys: Path, buyers: dict[str, int]) -> dict[str, str]:
    """`buyers add` for each (name, copy); the keys, as printed (the last line of the output)."""
    return {name: run_ok(["buyers", "add", "--record", str(record), "--keys", str(keys), "--buyer", name,
                          "--copy", str(copy_index)]).strip().splitlines()[-1] for name, copy_index in buyers.items()}
