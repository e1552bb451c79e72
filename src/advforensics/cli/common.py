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


def load_image_array(path: Path) -> tuple[Any, list[str]]:
    """Evidence images from an .npz without unpickling: (N, C, H, W) float32 in [0, 1] and row names.

    Takes the array `x_adv` (as `attacks run` writes it), else `images`, else `x`, else the only one;
    uint8 arrays are scaled by 1/255, (N, H, W) gains a channel axis, and where a boolean `success`
    mask is stored beside `x_adv`, only the successful rows are kept (failed attempts are not
    adversarial examples). Range and NaN checks are left to the consumer's input validation.
    """
    import numpy as np
    import torch

    from advforensics.errors import DataFileError, InputValidationError

    if not path.is_file():
        raise DataFileError(f"examples file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            key = next((k for k in ("x_adv", "images", "x") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataFileError(f"{path} has arrays {keys}; expected one named x_adv or images")
            array = data[key]
            success = data["success"] if key == "x_adv" and "success" in keys else None
    except (ValueError, OSError, EOFError) as error:
        raise DataFileError(f"cannot read {path} as .npz without pickle: {error}") from None
    rows = np.arange(len(array))
    if success is not None:
        if success.shape != array.shape[:1] or success.dtype != np.bool_:
            raise DataFileError(f"{path}: 'success' must be a boolean mask with one entry per x_adv row")
        array, rows = array[success], rows[success]
        if len(array) == 0:
            raise InputValidationError(f"{path} holds no successful adversarial example")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype.kind != "f":
        raise InputValidationError(f"{path}:{key} must be uint8 or floating point in [0, 1], got {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor, [f"{path.name}[{int(i)}]" for i in rows]
