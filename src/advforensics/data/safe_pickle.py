"""A restricted unpickler for the official CIFAR-10 python batches, and nothing else.

The CIFAR-10 distribution is a set of pickles. A plain `pickle.load` of a file a user hands in can run
arbitrary code, so the loader (1) verifies each file's md5 against the official checksum BEFORE reading
it and (2) unpickles with `find_class` limited to the numpy globals needed to rebuild a uint8 array.
Everything else (os.system, builtins.eval, ...) raises DataFileError before it is ever called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from advforensics.errors import DataFileError

try:  # NumPy 2 moved the implementation to numpy._core; pickles name either module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in `_ALLOWED`; any other global is refused, never imported."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None


def restricted_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data` allowing only plain containers and numpy arrays; anything else -> DataFileError."""
    try:
        # latin1: the batches were written by Python 2; latin1 keeps numpy's raw bytes intact
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError) as error:
        raise DataFileError(f"{source}: refused or corrupt pickle: {error}") from None
