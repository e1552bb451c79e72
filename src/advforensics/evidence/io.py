"""The one reader and writer of evidence: the adversarial examples an investigator is handed.

Evidence arrives from this project (`attacks run` writes an .npz with `x_adv` and a `success` mask) and
from elsewhere (ART, foolbox, a folder of PNGs, a 16-bit scan). `load_evidence` turns every such source into
(N, C, H, W) float32 in [0, 1], keeps each example's row in the original file (per-example results print it)
and reports, never hides, what it dropped or transposed. Nothing is ever unpickled.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advforensics.data.npz import load_arrays
from advforensics.errors import DataFileError, InputValidationError
from advforensics.utils import atomic_target, atomic_write_bytes

X_KEYS = ("x_adv", "adv", "adv_x", "x_adversarial", "adversarial", "adversarials", "adv_examples", "images",
          "x", "X", "data", "inputs")
MASK_KEYS = ("success", "is_adv", "is_adversarial", "successful")
LABEL_KEYS = ("y", "labels", "y_true", "true_labels")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class Evidence:
    """Examples ready for tracing or attribution, with where each came from."""

    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    names: list[str]  # one per row: "advs.npz[17]" or the image file
    rows: list[int]  # row in the original file (0..N-1 for image folders)
    dropped: list[int]  # original rows a success mask removed
    source: str
    layout: str  # how it was read: "npz:x_adv NCHW", "npz:adv_examples NHWC->NCHW", "png folder"
    labels: torch.Tensor | None = None  # (N,) int64 where the file carries them

    def __len__(self) -> int:
        return len(self.x)

    def summary(self) -> str:
        how = self.layout.split(":", 1)[1].replace(" ", ", ", 1) if ":" in self.layout else self.layout
        text = f"{len(self)} examples from {Path(self.source).name} ({how})"
        if self.labels is not None:
            text += ", with labels"
        if self.dropped:
            text += f", {len(self.dropped)} rows dropped by its success mask"
        return text


def load_evidence(path: str | Path, channels: int | None = None, size: tuple[int, int] | None = None) -> Evidence:
    """Read an .npz, .npy, image file or folder of images as evidence (see the module docstring).

    `channels` and `size` (H, W) are what the consumer takes: they settle ambiguous layouts and turn a
    mismatch into one clear error here rather than a shape error deep in a model.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"evidence not found: {path}")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return _load_images(path, channels, size)
    labels = mask = key = None
    loaded = load_arrays(path)  # .npz or .npy, told apart by content; members size-capped; never unpickled
    if isinstance(loaded, np.ndarray):
        array, what = loaded, path.name
    else:
        key, array = _pick_array(path, loaded)
        what = f"{path.name}:{key}"
    _check_rows(array, what)
    if key is not None:
        mask, labels = _first(loaded, MASK_KEYS, len(array)), _first(loaded, LABEL_KEYS, len(array))
    rows, dropped = np.arange(len(array)), np.zeros(0, dtype=np.int64)
    if mask is not None:
        if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
            raise InputValidationError(f"{path}: the success mask must be boolean (or 0/1), got {mask.dtype}")
        mask = mask.astype(bool)
        array, rows, dropped = array[mask], rows[mask], rows[~mask]
        if len(array) == 0:
            raise InputValidationError(f"{path} holds no successful adversarial example (all {len(mask)} rows "
                                       "failed its success mask)")
    if labels is not None:
        labels = labels[mask] if mask is not None else labels
        labels = torch.from_numpy(labels.astype(np.int64))
    x, layout = _to_nchw(array, what, channels, size)
    x = _scale(x, what)
    _check_shape(x, path, channels, size)
    return Evidence(x=x, names=[f"{path.name}[{int(i)}]" for i in rows], rows=[int(i) for i in rows],
                    dropped=[int(i) for i in dropped], source=str(path),
                    layout=f"{'npz:' + key if key else 'npy'} {layout}", labels=labels)


def save_evidence(path: str | Path, x: torch.Tensor | np.ndarray, success: Any = None, labels: Any = None,
                  meta: dict | None = None, overwrite: bool = False,
                  extras: dict[str, Any] | None = None) -> Path:
    """Write the .npz that `attacks run` writes (x_adv, success, labels, meta JSON, extras) atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputValidationError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    x_np = _numpy(x)
    if x_np.ndim != 4 or not (x_np.dtype == np.uint8 or x_np.dtype.kind == "f"):
        raise InputValidationError(f"x must be (N, C, H, W) uint8 or float, got {x_np.dtype} {x_np.shape}")
    arrays = {"x_adv": x_np if x_np.dtype == np.uint8 else x_np.astype(np.float32),
              "success": np.ones(len(x_np), bool) if success is None else _numpy(success).astype(bool)}
    if labels is not None:
        arrays["labels"] = _numpy(labels).astype(np.int64)
    if any(arrays[k].shape != (len(x_np),) for k in ("success", "labels") if k in arrays):
        raise InputValidationError(f"success and labels need one entry per example ({len(x_np)})")
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta, default=str))
    for key, value in (extras or {}).items():
        if key in arrays or key in ("success", "labels", "meta"):
            raise InputValidationError(f"extras key {key!r} is reserved (x_adv, success, labels, meta); rename it")
        arrays[key] = _numpy(value)
    if any(value.dtype.hasobject for value in arrays.values()):  # it would need unpickling to read back
        raise InputValidationError("an array to save holds Python objects; store numbers or a JSON string")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())  # a temporary file beside `path`, then os.replace
    return path


def save_images(folder: str | Path, x: torch.Tensor | np.ndarray, names: list[str] | None = None,
                fmt: str = "png", quality: int | None = None) -> list[Path]:
    """Write each example of (N, C, H, W) in [0, 1] as an 8-bit PNG (or JPEG), named so that order is kept."""
    from PIL import Image

    folder, fmt = Path(folder), fmt.lower()
    if fmt not in ("png", "jpeg", "jpg") or (quality is not None and fmt == "png"):
        raise InputValidationError(f"fmt must be png or jpeg (quality only with jpeg), got {fmt!r}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputValidationError(f"{folder} exists and is not an empty folder; choose another")
    array = _numpy(x)
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise InputValidationError(f"x must be (N, 1 or 3, H, W), got {array.shape}")
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    names = names or [f"{i:0{max(5, len(str(len(array) - 1)))}d}" for i in range(len(array))]
    if len(names) != len(array) or len(set(names)) != len(names) or any(os.sep in n or "/" in n for n in names):
        raise InputValidationError("names must be unique file names, one per example")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{'png' if fmt == 'png' else 'jpg'}" for name in names]
    for image, target in zip(array, paths):  # image: (C, H, W) uint8
        with atomic_target(target) as tmp:
            Image.fromarray(image[0] if len(image) == 1 else image.transpose(1, 2, 0)).save(
                tmp, **({} if quality is None else {"quality": quality}))
    return paths


def _pick_array(path: Path, data: Any) -> tuple[str, np.ndarray]:
    """The examples array: the first of X_KEYS, else the only array, else the only 3-D/4-D one."""
    keys = list(data.keys())
    if not keys:  # an empty archive, or one whose arrays all hold Python objects
        raise DataFileError(f"{path} holds no numeric array readable without unpickling")
    key = next((k for k in X_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if key is None:
        candidates = [k for k in keys if k not in MASK_KEYS + LABEL_KEYS and data[k].ndim in (3, 4)]
        if len(candidates) != 1:
            raise InputValidationError(f"{path} has arrays {keys} and none is named like evidence; store the "
                                       "examples as x_adv (np.savez(path, x_adv=...))")
        key = candidates[0]
    return key, data[key]


def _check_rows(array: np.ndarray, what: str) -> None:
    if array.ndim not in (3, 4):
        raise InputValidationError(f"{what} is {array.shape}; evidence is (N, C, H, W), (N, H, W, C) or (N, H, W)")
    if len(array) == 0:
        raise InputValidationError(f"{what} holds no examples (0 rows)")


def _first(data: Any, names: tuple[str, ...], n: int) -> np.ndarray | None:
    """The first array under `names` with one integer/boolean entry per row (others are not ours)."""
    for value in (data[name] for name in names if name in data.keys()):
        if value.shape == (n,) and (value.dtype.kind in "biu" or (value.dtype.kind == "f" and
                                                                  np.all(value == np.round(value)))):
            return value
    return None


def _to_nchw(array: np.ndarray, what: str, channels: int | None, size: tuple[int, int] | None
             ) -> tuple[np.ndarray, str]:
    if array.ndim == 3:
        return array[:, None], "NHW->NCHW"
    first, last = array.shape[1] in (1, 3), array.shape[3] in (1, 3)
    nhwc = last and not first
    if first and last:  # e.g. (N, 3, 32, 3): ask the consumer
        if channels is not None and array.shape[1] != channels and array.shape[3] == channels:
            nhwc = True
        elif size is not None and tuple(array.shape[1:3]) == tuple(size) and tuple(array.shape[2:]) != tuple(size):
            nhwc = True
    return (array.transpose(0, 3, 1, 2), "NHWC->NCHW") if nhwc else (array, "NCHW")


def _scale(array: np.ndarray, what: str) -> torch.Tensor:
    """uint8 / 255, uint16 / 65535, floats checked to lie in [0, 1] (with a hint where they do not)."""
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype.kind == "f":  # checked in its own precision: a float64 beyond float32 is out of range, not inf
        bad = ~np.isfinite(array).reshape(len(array), -1).all(1)
        if bad.any():
            raise InputValidationError(f"{what} has NaN or inf in {int(bad.sum())} of {len(array)} rows; "
                                       "drop or repair those rows")
        low, high = float(array.min()), float(array.max())
        if low < -1e-6 or high > 1 + 1e-6:
            hint = ("looks normalised (negative values): undo the normalisation" if low < -1e-6 else
                    "looks like 0-255 floats: divide by 255" if 1.5 < high <= 255 else "rescale it to [0, 1]")
            raise InputValidationError(f"{what} has values outside [0, 1] (min {low:.4g}, max {high:.4g}): {hint}")
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    else:
        raise InputValidationError(f"{what} is {array.dtype}; evidence is uint8, uint16 or float in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(array))


def _check_shape(x: torch.Tensor, path: Path, channels: int | None, size: tuple[int, int] | None) -> None:
    want = (channels if channels is not None else x.shape[1], *(size if size is not None else x.shape[2:]))
    if tuple(x.shape[1:]) != tuple(want):
        raise InputValidationError(f"evidence is (N, {', '.join(map(str, x.shape[1:]))}), the model takes "
                                   f"({', '.join(map(str, want))}): {path.name} is not evidence for this model")


def _load_images(path: Path, channels: int | None, size: tuple[int, int] | None) -> Evidence:
    from advforensics.data.images import decode_image

    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".")) if path.is_dir() else [path]  # hidden: ._a.png, not images
    if not files:
        raise InputValidationError(f"no .png/.jpg/.jpeg/.bmp images in {path}")
    arrays = [_channels(decode_image(file, str(file)), file, channels) for file in files]
    if len({a.shape for a in arrays}) > 1:
        raise InputValidationError(f"images in {path} have different shapes: {sorted({a.shape for a in arrays})}")
    x = torch.from_numpy(np.stack(arrays))
    _check_shape(x, path, channels, size)
    kind = "jpeg" if files[0].suffix.lower() in (".jpg", ".jpeg") else files[0].suffix.lower()[1:]
    return Evidence(x=x, names=[str(f) for f in files], rows=list(range(len(files))), dropped=[], source=str(path),
                    layout=f"{kind} {'folder' if path.is_dir() else 'file'}")


def _channels(image: np.ndarray, file: Path, channels: int | None) -> np.ndarray:
    """(C, H, W) float32 in [0, 1] with the channels the consumer takes; grey stored as RGB loses nothing."""
    array = image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 255.0)
    if channels == 1 and len(array) == 3:
        if not (array == array[:1]).all():
            raise InputValidationError(f"{file} is colour (RGB) but 1 channel is expected; it is not converted "
                                       "to grey silently")
        array = array[:1]
    elif channels == 3 and len(array) == 1:
        raise InputValidationError(f"{file} is greyscale (1 channel) but 3 channels (RGB) are expected")
    return array


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)

