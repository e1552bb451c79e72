"""The option types and options every command shares: outputs (`OutputFile`, `OutputDir`, which the
output guard of common.py checks), `--json`, `--seed`, `--device`, `--seller-key`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


class OutputFile(click.Path):
    """A file the command writes (checked by the output guard). replaceable=False: never replaced, not even
    with --overwrite (a private key). card_copy: a weights file, written with a JSON copy of its card
    beside it (`<base>.json`), which no other output of the command may name."""

    def __init__(self, replaceable: bool = True, card_copy: bool = False) -> None:
        super().__init__(dir_okay=False, path_type=Path)
        self.replaceable = replaceable
        self.card_copy = card_copy


class OutputDir(click.Path):
    """A directory the command writes into. managed: the library keeps its own manifest and lock there
    (a corpus), so only the input overlap is checked here."""

    def __init__(self, managed: bool = False) -> None:
        super().__init__(file_okay=False, path_type=Path)
        self.managed = managed


json_option = click.option(
    "--json", "json_path", type=OutputFile(), default=None,
    help="Also write the measured figures as JSON to this file.",
)
seller_key_option = click.option(
    "--seller-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The seller's public key (KEY.pub from `trace keygen`): the record's signature must verify, else "
         "nothing is traced. Without it an unsigned or unchecked record only warns.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N.")


def emit_json(json_path: Path | None, payload: dict[str, Any]) -> None:
    """Write a command's --json report (rank 0 alone under torchrun: the ranks report the same run)."""
    from advforensics import distributed

    if json_path is not None and not (distributed.launched() and not distributed.current().is_main):
        import logging

        from advforensics.utils import write_json

        write_json(json_path, payload)
        logging.getLogger("advforensics").info("wrote %s", json_path)
