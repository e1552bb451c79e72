"""Reading .npz/.npy files a user hands in: never unpickled, and sized before anything is decompressed.

An .npz is a zip: one small member can claim gigabytes, so every member's declared size is checked
against a cap (and the archive's total) before numpy reads it. zipfile stops at the declared size, so
the cap holds even when the compressed stream would inflate further.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from advforensics.errors import DataFileError

log = logging.getLogger(__name__)
MAX_MEMBER_BYTES = 1 << 30  # 1 GiB: 80k CIFAR images as float32 fit, a zip bomb does not
MAX_TOTAL_BYTES = 4 << 30


def check_zip_sizes(path: str | Path, max_member_bytes: int | None = None, max_total_bytes: int | None = None) -> None:
    """Refuse a zip (or .npz) whose members would decompress past the caps (default: the module's, read at call
    time); a broken zip -> DataFileError."""
    max_member_bytes = MAX_MEMBER_BYTES if max_member_bytes is None else max_member_bytes
    max_total_bytes = MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except Exception as error:  # noqa: BLE001 - BadZipFile, OSError and whatever a damaged header raises
        raise DataFileError(f"{path} is not a readable zip/.npz file: {error}") from None
    for member in members:
        if member.file_size > max_member_bytes:
            raise DataFileError(f"{path}: member {member.filename!r} would decompress to {member.file_size:,} bytes "
                                f"(cap {max_member_bytes:,}); refusing to read it")
    total = sum(m.file_size for m in members)
    if total > max_total_bytes:
        raise DataFileError(f"{path} would decompress to {total:,} bytes (cap {max_total_bytes:,}); refusing to read it")


def load_arrays(path: str | Path, max_member_bytes: int | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """The array of an .npy, or the arrays of an .npz (told apart by content, not by name), never unpickled:
    an .npz member holding Python objects is left out with a warning."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
        if not magic.startswith((b"PK\x03\x04", b"\x93NUMPY")):
            raise DataFileError(f"{path} is not an .npz or .npy file")
        if magic.startswith(b"PK"):
            check_zip_sizes(path, max_member_bytes)
            arrays = {}
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    try:
                        arrays[key] = data[key]
                    except ValueError as error:  # an object array: only unpickling reads it, so it is left out
                        if "pickle" not in str(error):
                            raise
                        log.warning("%s: array %r holds Python objects and is not read (nothing is unpickled)",
                                    path, key)
            return arrays
        return np.load(path, allow_pickle=False)
    except DataFileError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged zip raises anything (NotImplementedError, RuntimeError...)
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "pickle" in text:  # numpy's hint is to unpickle: never for a user's file
            text = "it holds Python objects, which would need unpickling (nothing here is unpickled)"
        raise DataFileError(f"cannot read {path} as .npz/.npy: {text}") from None
