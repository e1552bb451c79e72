"""Shared CLI plumbing, applied by construction to every command through `ForensicsGroup`:

- the error boundary: a user error of any kind becomes one `Error: ...` line and exit code 2; anything
  else one `internal error` line and exit 1 (ADVFORENSICS_DEBUG=1 shows the traceback);
- the output guard: options typed `OutputFile`/`OutputDir` are checked before the command runs (never an
  input, never an existing file without --overwrite, see advforensics.outputs), and every command that
  has one gets `--overwrite`;
- ranks: under torchrun, a command made with `ranks_ok=True` runs on every rank; rank 0 alone claims the
  outputs and prints, the others run silent; any other command refuses to start on several ranks.
The option types and shared options are in options.py; the error types and the ranks in boundary.py.
"""

from __future__ import annotations

import errno
import inspect
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from advforensics.cli.boundary import UserError, commands_on_ranks, ranks, user_error
from advforensics.cli.options import OutputDir, OutputFile


def _paths(value: Any) -> Iterator[Path]:
    """Existing paths named by a parameter value (a Path, a str, a comma list, or a tuple of them)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _paths(item)
    elif isinstance(value, Path):
        if value.exists():
            yield value
    elif isinstance(value, str) and value:
        for part in value.split(","):
            if part.strip() and Path(part.strip()).exists():
                yield Path(part.strip())


class ForensicsCommand(click.Command):
    """A command behind the error boundary and the output guard (see the module docstring)."""

    def __init__(self, *args: Any, ranks_ok: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ranks_ok = ranks_ok  # the command splits its work over torchrun's ranks (advforensics.distributed)
        writes = any(isinstance(p.type, OutputDir) or (isinstance(p.type, OutputFile) and p.type.replaceable)
                     for p in self.params)
        if writes and not any(p.name == "overwrite" for p in self.params):
            self.params.append(click.Option(["--overwrite"], is_flag=True,
                                            help="Replace outputs that exist (never an input; nothing else is deleted)."))

    def invoke(self, ctx: click.Context) -> Any:
        here = ranks()
        try:
            if here.distributed and not self.ranks_ok:
                raise UserError(f"`{ctx.command_path}` runs in one process; launch it without torchrun (the "
                                f"commands that run on several: {', '.join(commands_on_ranks(ctx))})")
            return self._guarded(ctx) if here.is_main else self._silent(ctx)
        except (click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 - the boundary: every error becomes one line
            if os.environ.get("ADVFORENSICS_DEBUG"):
                raise
            raised = user_error(error)
            if here.distributed:  # which process said it, among the run's
                raised.message = f"rank {here.rank} of {here.world_size}: {raised.message}"
            raise raised from None

    def _silent(self, ctx: click.Context) -> Any:
        """A rank other than 0 under torchrun: the same work, while rank 0 claims the outputs and prints."""
        import contextlib

        ctx.meta["output_directories"] = []
        self._drop_overwrite(ctx)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            return super().invoke(ctx)

    def _drop_overwrite(self, ctx: click.Context) -> None:
        """--overwrite is the guard's own option unless the command takes it too."""
        if "overwrite" in ctx.params and "overwrite" not in inspect.signature(self.callback).parameters:
            ctx.params.pop("overwrite")

    def _guarded(self, ctx: click.Context) -> Any:
        from advforensics.outputs import OutputDirectory, check_new_file, check_not_input

        for param in self.params:  # no option of ours means anything at NaN or infinity
            value = ctx.params.get(param.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{param.opts[0]} must be a finite number, got {value}")
        overwrite = bool(ctx.params.get("overwrite"))
        outputs = [(p, ctx.params.get(p.name)) for p in self.params if isinstance(p.type, (OutputFile, OutputDir))]
        outputs = [(p, v) for p, v in outputs if v is not None]
        output_names = {p.name for p, _ in outputs}
        inputs = [path for name, value in ctx.params.items() if name not in output_names for path in _paths(value)]
        seen: dict[Path, str] = {}
        directories = []
        for param, value in outputs:
            flag = param.opts[0]
            check_not_input(value, inputs, what=f"{flag}")
            named = [(value, flag)]
            if isinstance(param.type, OutputFile) and param.type.card_copy:  # <base>.json, for either spelling
                named += [(copy, f"{flag}'s card copy") for copy in
                          {value.with_suffix(".json"), value.with_name(value.name + ".json")} if copy != value]
            for path, what in named:
                if path.resolve() in seen:
                    raise UserError(f"{what} and {seen[path.resolve()]} name the same path {path}")
                seen[path.resolve()] = what
            if isinstance(param.type, OutputFile):
                check_new_file(value, overwrite, what=flag, replaceable=param.type.replaceable)
            elif not param.type.managed:
                directory = OutputDirectory(value, ctx.command_path.split(" ", 1)[-1])
                directory.claim(overwrite)
                directories.append(directory)
        ctx.meta["output_directories"] = directories
        self._drop_overwrite(ctx)
        try:
            result = super().invoke(ctx)
        except BaseException:
            for directory in directories:
                directory.abandon()
            raise
        for directory in directories:
            directory.seal()
        return result


class ForensicsGroup(click.Group):
    """A group whose commands and subgroups are ForensicsCommand/ForensicsGroup; usage errors in one line."""

    command_class = ForensicsCommand
    group_class = type

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:  # click prints usage + hint + error; one line says it all
            where = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
            click.echo(f"Error: {error.format_message()}{where}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        except OSError as error:
            if error.errno == errno.EPIPE:  # output piped into `head`
                sys.exit(1)
            raise
        sys.exit(result if isinstance(result, int) else 0)


def command_line(ctx: click.Context) -> str:
    """The command as a shell line, rebuilt from what click parsed (for a chain of custody)."""
    import shlex

    words = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False or value == () or param.name == "help":
            continue
        if isinstance(param, click.Argument):
            words += [str(v) for v in (value if isinstance(value, tuple) else (value,))]
        elif param.default == value and not param.required:
            continue
        elif value is True:
            words.append(param.opts[0])
        else:
            for item in value if isinstance(value, tuple) else (value,):
                words += [param.opts[0], str(item)]
    return shlex.join(words)
