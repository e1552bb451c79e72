"""A tiny cache of named uint8/int64 arrays as plain .npy files (never pickle), keyed by content hash."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from advforensics.utils import atomic_write_bytes

logger = logging.getLogger(__name__)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def cached_arrays(folder: Path | None, names: Sequence[str],
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Load `names` from `folder/<name>.npy`, or call `build()` and store its result there.

    A missing or unreadable cache just means `build()` runs; an unwritable cache dir is only a warning.
    The caller puts the content hash of the source into `folder`, so a changed source never hits.
    """
    if folder is not None:
        try:
            return {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in names}
        except (OSError, ValueError):
            pass
    arrays = build()
    if folder is not None:
        try:
            for name in names:
                atomic_write_bytes(folder / f"{name}.npy", npy_bytes(arrays[name]))
        except OSError as error:
            logger.warning("could not write the cache in %s: %s", folder, error)
    return arrays
