"""The error boundary's pieces (the one line an error becomes) and the ranks a command runs on."""

from __future__ import annotations

import os
import zipfile
from typing import Any

import click

from advforensics.errors import AdvForensicsError


class UserError(click.ClickException):
    """Printed as `Error: <message>` with exit code 2 and no traceback."""

    exit_code = 2


class InternalError(click.ClickException):
    """A bug, not the user's input: one line, exit code 1."""

    exit_code = 1


def user_error(error: BaseException) -> click.ClickException:
    """The one line a library error becomes."""
    if isinstance(error, click.ClickException):
        return error
    if isinstance(error, AdvForensicsError):
        return UserError(str(error))
    if isinstance(error, FileNotFoundError):
        return UserError(f"file not found: {error.filename or error}")
    if isinstance(error, OSError) and error.errno is not None:  # permissions, a folder given for a file, disk full
        where = f": {error.filename}" if error.filename else ""
        return UserError(f"{error.strerror or os.strerror(error.errno)}{where}")
    if isinstance(error, zipfile.BadZipFile):
        return UserError(f"not a readable zip/.npz file: {error}")
    if type(error).__name__ == "DecompressionBombError":  # PIL, before we cap pixels ourselves
        return UserError(str(error).splitlines()[0])
    if isinstance(error, MemoryError):
        return UserError("out of memory: the input is too large for this machine")
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return InternalError(f"internal error ({type(error).__name__}: {text}); this is a bug in advforensics, please "
                         "report it (ADVFORENSICS_DEBUG=1 shows the traceback)")


def ranks() -> Any:
    """This process's advforensics.distributed.Ranks (torch is imported only under torchrun)."""
    from advforensics import distributed

    return distributed.current() if distributed.launched() else distributed.SINGLE


def commands_on_ranks(ctx: click.Context) -> list[str]:
    """The commands made with ranks_ok, by name."""
    def walk(group: click.Group, prefix: str) -> list[str]:
        return [name for key, command in sorted(group.commands.items()) for name in
                (walk(command, f"{prefix}{key} ") if isinstance(command, click.Group) else
                 [f"{prefix}{key}"] if getattr(command, "ranks_ok", False) else [])]
    root = ctx.find_root().command
    return walk(root, "") if isinstance(root, click.Group) else []
