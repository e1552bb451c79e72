"""The `advforensics` command: a thin group over the library, one module per command group."""

from __future__ import annotations

import logging

import click

from advforensics import __version__
from advforensics.cli.common import ForensicsGroup


@click.group(cls=ForensicsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="advforensics")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Forensic investigation of adversarial attacks on image classifiers.

    \b
    Example:
      advforensics data list
      advforensics models train --model lenet --data mnist-5k --epochs 2 --out runs/lenet
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register_groups() -> None:
    # One module per command group; each keeps its heavy imports inside its commands.
    from importlib import import_module

    for module_name in ("data", "models", "attacks", "trace", "attribution", "investigate", "serve", "queries", "demo"):
        module = import_module(f"advforensics.cli.{module_name}")
        for command in module.COMMANDS:
            cli.add_command(command)


_register_groups()


def main() -> None:
    import sys

    from advforensics import distributed

    # `torchrun ... -m advforensics -- COMMAND ...`: the "--" keeps torchrun's own parser from reading our
    # options (it takes --start for its --start-method, and --n for nothing it can decide on)
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not distributed.launched():
        cli(args=args, prog_name="advforensics")
        return
    distributed.start()  # one process of several under torchrun: join the others first
    try:
        cli(args=args, prog_name="advforensics")
    finally:
        distributed.stop()


if __name__ == "__main__":
    main()
