"""File helpers shared by the loaders: checksums, reading (optionally gzipped) files, clear errors."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from advforensics.data.spec import DATA_DIR_ENV
from advforensics.errors import DataFileError


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_maybe_gzip(path: Path) -> bytes:
    """The file's content, decompressed if it is gzip; a truncated or corrupt archive -> DataFileError."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataFileError(f"cannot read {path}: {error.strerror or error}") from None
    if raw[:2] != b"\x1f\x8b":
        if path.suffix == ".gz":
            raise DataFileError(f"{path} is not a gzip file (bad magic bytes)")
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataFileError(f"{path} is a truncated or corrupt gzip file: {error}") from None


def find_first(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The first existing file `dir/name`, trying every name in each directory before the next one."""
    for directory in dirs:
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def missing_files_error(dataset: str, expected: Iterable[str], searched: Sequence[Path],
                        downloadable: bool) -> DataFileError:
    """An error that says what was expected, where we looked, and the three ways to fix it."""
    expected_list = ", ".join(expected)
    searched_list = ", ".join(str(p) for p in searched)
    fixes = [f"pass --data-dir DIR (data_dir=...) pointing at a directory that holds them",
             f"or set {DATA_DIR_ENV}"]
    if downloadable:
        fixes.append("or add --download (download=True) to fetch and verify them")
    return DataFileError(
        f"{dataset}: data files not found. Expected {expected_list}; searched {searched_list}. "
        f"To fix: {', '.join(fixes)}."
    )
