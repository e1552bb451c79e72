"""The data layer's types: what a data set is (spec), what a load returns (dataset + info), the registry.

Loaders return raw uint8 arrays (`RawImages`); `advforensics.data.api.load_dataset` turns them into an
`ImageDataset` in one place, so hashing, `limit` and the [0, 1] scaling are identical for every set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advforensics.registry import Registry

DATA_DIR_ENV = "ADVFORENSICS_DATA_DIR"
CACHE_DIR_ENV = "ADVFORENSICS_CACHE_DIR"
DEFAULT_DATA_DIR = Path("~/.cache/advforensics/data")
DEFAULT_CACHE_DIR = Path("~/.cache/advforensics/cache")


@dataclass(frozen=True)
class DatasetInfo:
    """Provenance of a loaded data set: enough to tell two loads apart or prove them equal."""

    name: str
    split: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]  # (C, H, W)
    num_examples: int
    source: str  # file path or "embedded:<package>"
    sha256: str  # content hash of the uint8 images + labels as loaded (after `limit`)

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["classes"] = list(self.classes)
        payload["shape"] = list(self.shape)
        return payload


@dataclass
class ImageDataset:
    """Images in [0, 1] with integer labels and the info that says where they came from."""

    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    info: DatasetInfo

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (C, H, W), label) so that a DataLoader can batch the set directly."""
        return self.images[index], self.labels[index]


@dataclass(frozen=True)
class FileSpec:
    """One expected file: its name, content checksum and where to download it from.

    `md5` is the checksum of the file's content (for .gz files: of the DECOMPRESSED bytes, so a copy that
    was re-compressed still verifies); `archive_md5` is the checksum of the published file itself, used to
    verify downloads and as a fallback where the content checksum is unknown.
    """

    name: str
    md5: str | None = None
    archive_md5: str | None = None
    urls: tuple[str, ...] = ()  # mirrors, tried in order
    size: int | None = None  # content size in bytes, where known


@dataclass(frozen=True)
class DatasetSpec:
    """Everything known about a data set without loading it."""

    name: str
    description: str
    classes: tuple[str, ...]  # empty where the classes are discovered from the files (imagefolder)
    shape: tuple[int, int, int] | None  # (C, H, W); None where discovered from the files
    splits: tuple[str, ...]  # empty where discovered from the files
    source_kind: str  # "embedded", "files" or "folder"
    sizes: dict[str, int] = field(default_factory=dict)  # split -> number of examples
    files: tuple[FileSpec, ...] = ()  # expected files (for missing-file errors and downloads)
    subdirs: tuple[str, ...] = ()  # directories under data_dir searched before data_dir itself
    url: str = ""  # home page
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["files"] = [asdict(f) for f in self.files]
        return payload


@dataclass(frozen=True)
class LoadRequest:
    """What a loader is asked for. `limit` is a hint: loaders may decode only that many examples."""

    spec: DatasetSpec
    split: str
    data_dir: Path
    download: bool
    limit: int | None
    cache_dir: Path


@dataclass
class RawImages:
    """A loader's result before conversion: uint8 images, int64 labels, class names, source."""

    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    source: str
    max_value: float = 255.0  # pixel value that maps to 1.0 (16 for scikit-learn's digits)


Loader = Callable[[LoadRequest], RawImages]


@dataclass(frozen=True)
class DatasetEntry:
    spec: DatasetSpec
    loader: Loader


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> Callable[[Loader], Loader]:
    """Register `loader` under `spec.name`; the decorator keeps the spec and the code side by side."""

    def decorator(loader: Loader) -> Loader:
        DATASETS.register(spec.name)(DatasetEntry(spec=spec, loader=loader))
        return loader

    return decorator


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the argument, else $ADVFORENSICS_DATA_DIR, else ~/.cache/advforensics/data."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_DIR.expanduser()


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where decoded image folders are cached: the argument, else $ADVFORENSICS_CACHE_DIR, else
    ~/.cache/advforensics/cache (never inside data_dir, which may be read-only)."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_CACHE_DIR.expanduser()


def candidate_dirs(spec: DatasetSpec, data_dir: Path) -> list[Path]:
    """Directories searched for a set's files, in order: data_dir/<subdir> for each subdir, then data_dir."""
    return [data_dir / sub for sub in spec.subdirs] + [data_dir]
