"""What a command may write: never one of its inputs, never a file it did not make, always atomically.

A directory a command writes into gets `.advforensics-outputs.json`: the command, whether its run
finished, and the sha256 of every file in it at the end. A later run may write into the directory again
only while everything there is still what the tool wrote (an unfinished run's files count as its own,
so interrupted work resumes); a file someone added or edited stops it until `--overwrite` is given.
`--overwrite` lets a command replace what it writes; it never deletes anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from advforensics.errors import InputValidationError
from advforensics.utils import atomic_write_bytes, sha256_file

OUTPUTS_FILE = ".advforensics-outputs.json"
_IGNORED = (OUTPUTS_FILE, ".advforensics.lock")


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def check_not_input(output: Path, inputs: Iterable[Path], what: str = "output") -> None:
    """Refuse an output that is an input, lies inside an input folder, or is a folder holding an input file."""
    target = output.resolve()
    for source in inputs:
        resolved = source.resolve()
        if _inside(target, resolved) and (target == resolved or resolved.is_dir()):
            where = "is" if target == resolved else "lies inside"
            raise InputValidationError(f"{what} {output} {where} the input {source}; choose another path "
                                       "(inputs are never overwritten)")


def check_new_file(path: Path, overwrite: bool, what: str = "output", replaceable: bool = True) -> None:
    """An output file may replace an existing file only with overwrite (never when not replaceable, e.g. a
    private key), and never a directory."""
    if path.is_dir():
        raise InputValidationError(f"{what} {path} is a directory; give a file path")
    if path.exists() and not replaceable:
        raise InputValidationError(f"{path} already exists and is never replaced; choose another path")
    if path.exists() and not overwrite:
        raise InputValidationError(f"{path} exists; pass --overwrite to replace it")


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.name not in _IGNORED)


def _snapshot(directory: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """Cheap fingerprint of the files present: (size, mtime_ns) by name."""
    stats = {name: (directory / name).stat() for name in names if (directory / name).is_file()}
    return {name: (s.st_size, s.st_mtime_ns) for name, s in stats.items()}


@dataclass
class OutputDirectory:
    """A directory one command writes into, with the record of what it wrote (see the module docstring)."""

    path: Path
    command: str
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256 at the last seal
    created: bool = False  # claim() made the directory (so a run that wrote nothing may remove it)
    _before: tuple[dict, bytes | None] | None = field(default=None, repr=False)  # what claim() found

    def _record(self) -> dict | None:
        record_path = self.path / OUTPUTS_FILE
        if not record_path.is_file():
            return None
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None

    def owned(self) -> list[str]:
        """Files the tool wrote here that are unchanged since (the only ones it may ever delete)."""
        record = self._record() or {"files": {}}
        return [name for name, digest in record["files"].items()
                if (self.path / name).is_file() and sha256_file(self.path / name) == digest]

    def claim(self, overwrite: bool) -> None:
        """Check the directory may be written (see the module docstring) and mark it as this command's."""
        self.created = not self.path.exists()
        if self.path.exists() and not self.path.is_dir():
            raise InputValidationError(f"{self.path} exists and is not a directory")
        present = _files(self.path) if self.path.is_dir() else []
        record = self._record()
        if present and not overwrite:
            self._check_ours(present, record)
        self.files = dict(record["files"]) if record else {}
        record_path = self.path / OUTPUTS_FILE
        self._before = (_snapshot(self.path, present), record_path.read_bytes() if record_path.is_file() else None)
        self._write(complete=False)

    def _check_ours(self, present: list[str], record: dict | None) -> None:
        hint = "choose a new directory or pass --overwrite"
        if record is None:
            raise InputValidationError(f"{self.path} is not empty and advforensics did not write it; {hint}")
        if record.get("command") != self.command:
            raise InputValidationError(f"{self.path} holds the output of `advforensics {record.get('command')}`; {hint}")
        if not record.get("complete"):  # an unfinished run of this command: what is here is its own
            return
        listed = record["files"]
        for name in present:
            if name in listed and sha256_file(self.path / name) != listed[name]:
                raise InputValidationError(f"{self.path / name} changed since advforensics wrote it; {hint}")
            if name not in listed:
                raise InputValidationError(f"{self.path / name} was not written by advforensics; {hint}")

    def abandon(self) -> None:
        """After a failed run: if it changed nothing, put the record back as it was (and remove a directory
        the claim made); a run that wrote files is recorded as unfinished, so a rerun resumes."""
        if not self.path.is_dir() or self._before is None:
            return
        files, record = self._before
        if _snapshot(self.path, _files(self.path)) != files:
            self.seal(complete=False)  # what it wrote is its own; a rerun resumes
            return
        if record is not None:
            atomic_write_bytes(self.path / OUTPUTS_FILE, record)
            return
        (self.path / OUTPUTS_FILE).unlink(missing_ok=True)
        if self.created and not any(self.path.iterdir()):
            self.path.rmdir()

    def seal(self, complete: bool = True) -> None:
        """Record the sha256 of every file now in the directory (complete=False: the run goes on)."""
        self.files = {name: sha256_file(self.path / name) for name in _files(self.path)
                      if (self.path / name).is_file()}
        self._write(complete)

    def _write(self, complete: bool) -> None:
        payload = {"command": self.command, "complete": complete, "files": self.files}
        atomic_write_bytes(self.path / OUTPUTS_FILE, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())

    def remove_owned(self) -> list[str]:
        """Delete the files the tool wrote here and nobody changed since; keep everything else."""
        removed = self.owned()
        for name in removed:
            (self.path / name).unlink()
        for folder in sorted((p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()
        return removed
