"""The one image decoder: every PIL mode is read for what it means or refused, and sizes are capped.

Evidence and image-folder data sets both come through here. A palette image is looked up in its
palette (its raw indices are not pixels), 1-bit becomes 0/255, 16-bit greyscale keeps its 16 bits, an
alpha channel is dropped with the stored colours kept (what PIL's convert("RGB") hands a classifier's
loader, so the pixels the attacker wrote), and an image claiming more than MAX_PIXELS is refused before it is decompressed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from advforensics.errors import DataFileError, InputValidationError

MAX_PIXELS = 1 << 24  # 4096 x 4096: far above any classifier's input, far below a decompression bomb
_DEEP = ("I;16", "I;16B", "I;16L", "I")  # 16-bit greyscale (PIL reads some 16-bit PNGs as 32-bit "I")


def decode_image(data: bytes | Path, name: str) -> np.ndarray:
    """(C, H, W) uint8, or uint16 for 16-bit greyscale; C is 1 (grey) or 3 (RGB)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise InputValidationError(f"{name} is {width}x{height} pixels (cap {MAX_PIXELS:,}); refusing "
                                               "to decode it")
                image.load()
                return _array(image, name)
    except InputValidationError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputValidationError(f"{name}: {str(error).splitlines()[0]}") from None
    except Exception as error:  # noqa: BLE001 - a damaged file makes PIL raise almost anything
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataFileError(f"cannot read image {name}: {text}") from None


def _array(image, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    mode = image.mode
    if mode == "P" or mode == "PA":  # palette indices -> the colours they index (with their transparency)
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
    if image.mode in ("RGBA", "LA"):
        image = image.convert("RGB" if image.mode == "RGBA" else "L")
    if image.mode in _DEEP:
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise InputValidationError(f"{name}: mode {mode} values outside 0..65535")
        array = array.astype(np.uint16)
    elif image.mode in ("L", "RGB"):
        array = np.asarray(image, dtype=np.uint8)
    else:
        raise InputValidationError(f"{name}: image mode {mode} is not supported (grey, RGB, palette, 1-bit or "
                                   "16-bit grey); convert it to RGB or L")
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
