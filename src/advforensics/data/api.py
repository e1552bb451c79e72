"""The data layer's entry points: look a set up by name, load it, describe it."""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import torch

from advforensics.data.spec import (
    DATASETS, DatasetInfo, DatasetSpec, ImageDataset, LoadRequest, RawImages, resolve_cache_dir,
    resolve_data_dir,
)
from advforensics.errors import DataFileError, InputValidationError

logger = logging.getLogger(__name__)


def list_datasets() -> list[str]:
    """Names of every registered data set, sorted."""
    return DATASETS.names()


def dataset_spec(name: str) -> DatasetSpec:
    """What is known about `name` without loading it (classes, shape, files, checksums, URLs)."""
    return DATASETS.get(name).spec


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over dtype, shape and bytes of the uint8 images (N, C, H, W) and then the int64 labels (N,)."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(images), np.ascontiguousarray(labels)):
        digest.update(f"{array.dtype.str}:{array.shape}|".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _check_raw(raw: RawImages, name: str) -> None:
    """Loaders are ours, but their files are not: catch inconsistent shapes before they reach a model."""
    if raw.images.dtype != np.uint8 or raw.images.ndim != 4:
        raise DataFileError(f"{name}: loader produced {raw.images.dtype} {raw.images.shape}, not uint8 (N, C, H, W)")
    if raw.labels.shape != (len(raw.images),):
        raise DataFileError(f"{name}: {len(raw.images)} images but labels of shape {raw.labels.shape}")
    if raw.labels.size and (raw.labels.min() < 0 or raw.labels.max() >= len(raw.classes)):
        raise DataFileError(f"{name}: labels outside 0..{len(raw.classes) - 1}")


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike[str] | None = None,
                 download: bool = False, limit: int | None = None, *,
                 cache_dir: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Load split `split` of data set `name` as float32 images in [0, 1] and int64 labels.

    data_dir: where files are searched (see `resolve_data_dir`); for `imagefolder` the root itself.
    download: fetch missing files from the known mirrors and verify their checksums.
    limit: keep only the first `limit` examples (image folders then decode only those).
    cache_dir: where decoded image folders are cached (see `resolve_cache_dir`).
    Raises UnknownNameError (name), InputValidationError (split, limit), DataFileError (files).
    """
    entry = DATASETS.get(name)
    spec = entry.spec
    split = str(split).lower()
    if spec.splits and split not in spec.splits:
        raise InputValidationError(f"{spec.name}: unknown split {split!r}; choose one of {', '.join(spec.splits)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise InputValidationError(f"limit must be a positive integer or None, got {limit!r}")
    request = LoadRequest(spec=spec, split=split, data_dir=resolve_data_dir(data_dir), download=bool(download),
                          limit=None if limit is None else int(limit), cache_dir=resolve_cache_dir(cache_dir))
    raw = entry.loader(request)
    _check_raw(raw, spec.name)
    images, labels = raw.images, raw.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    info = DatasetInfo(
        name=spec.name, split=split, classes=tuple(raw.classes),
        shape=tuple(int(d) for d in images.shape[1:]),  # type: ignore[arg-type]
        num_examples=int(len(labels)), source=raw.source, sha256=content_sha256(images, labels),
    )
    if not images.flags.writeable or not images.flags.c_contiguous:  # e.g. np.frombuffer views
        images = np.array(images, order="C")
    tensor = torch.from_numpy(images).to(torch.float32).div_(raw.max_value)  # (N, C, H, W) in [0, 1]
    logger.info("loaded %s/%s: %d examples %s from %s", spec.name, split, info.num_examples, info.shape, info.source)
    return ImageDataset(images=tensor, labels=torch.from_numpy(np.array(labels, dtype=np.int64)), info=info)
