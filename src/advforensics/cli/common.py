"""Shared CLI plumbing: user errors become one line on stderr, measured figures go to --json."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from advforensics.errors import AdvForensicsError

F = TypeVar("F", bound=Callable[..., Any])


class UserError(click.ClickException):
    """Printed as `Error: <message>` with exit code 2 and no traceback."""

    exit_code = 2


def handle_errors(func: F) -> F:
    """Turn library input errors into a single clear CLI error line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AdvForensicsError as error:
            raise UserError(str(error)) from None
        except FileNotFoundError as error:
            raise UserError(f"file not found: {error.filename or error}") from None

    return wrapper  # type: ignore[return-value]


json_option = click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write the measured figures as JSON to this file.",
)
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
device_option = click.option("--device", default="auto", show_default=True,
                             help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N.")


def emit_json(json_path: Path | None, payload: dict[str, Any]) -> None:
    if json_path is not None:
        from advforensics.utils import write_json

        write_json(json_path, payload)
        logging.getLogger("advforensics").info("wrote %s", json_path)

