"""Image folders `root/<split>/<class>/<file>` (a directory or a zip), decoded once and cached as .npy.

Order: classes in the given order, files sorted by name within a class, then interleaved round-robin
(class 0 file 0, class 1 file 0, ...), so that every prefix -- what `limit` takes -- is class-balanced
and only `limit` images need decoding. Decoding 60k JPEGs takes a while, so the decoded uint8 arrays
are cached (plain .npy, never pickle) under a key made from the source's content hash; a later load
with a larger `limit` decodes only the missing tail.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from advforensics.data.cache import npy_bytes
from advforensics.data.images import decode_image as read_image
from advforensics.data.spec import RawImages
from advforensics.errors import DataFileError
from advforensics.utils import atomic_write_bytes, sha256_bytes, sha256_file

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CACHE_FORMAT = "advforensics-imagefolder-v1"


@dataclass(frozen=True)
class FolderSource:
    """A tree of images: `path` is a directory, or a zip whose tree starts at `prefix` inside it."""

    path: Path
    is_zip: bool
    # split -> class -> sorted member names (zip member names or paths relative to `path`)
    tree: dict[str, dict[str, list[str]]]

    def splits(self) -> list[str]:
        return sorted(self.tree)

    def classes(self) -> list[str]:
        """Union of the class directories over all splits, sorted, so labels agree across splits."""
        return sorted({c for split in self.tree.values() for c in split})


def _is_image(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def _zip_tree(path: Path) -> dict[str, dict[str, list[str]]]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        raise DataFileError(f"{path} is not a readable zip file: {error}") from None
    by_prefix: dict[str, dict[str, dict[str, list[str]]]] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) < 3 or not _is_image(name) or any(p.startswith((".", "__MACOSX")) for p in parts):
            continue
        prefix = "/".join(parts[:-3])
        split, cls = parts[-3], parts[-2]
        by_prefix.setdefault(prefix, {}).setdefault(split, {}).setdefault(cls, []).append(name)
    if not by_prefix:
        return {}
    tree = by_prefix[min(by_prefix, key=lambda p: (p.count("/"), p))]  # the shallowest tree
    for split in tree.values():
        for members in split.values():
            members.sort()
    return tree


def _dir_tree(path: Path) -> dict[str, dict[str, list[str]]]:
    tree: dict[str, dict[str, list[str]]] = {}
    for split_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes: dict[str, list[str]] = {}
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(f"{split_dir.name}/{class_dir.name}/{f.name}" for f in class_dir.iterdir()
                           if f.is_file() and _is_image(f.name))
            if files:
                classes[class_dir.name] = files
        if classes:
            tree[split_dir.name] = classes
    return tree


# (resolved path, size, mtime_ns) -> value: a zip's index and hash are computed once per process
_ZIP_TREES: dict[tuple[str, int, int], dict[str, dict[str, list[str]]]] = {}
_ZIP_HASHES: dict[tuple[str, int, int], str] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def open_folder_source(path: Path) -> FolderSource | None:
    """Index a directory or zip of `<split>/<class>/<image>`; None if `path` holds no such tree."""
    if path.is_file() and path.suffix.lower() == ".zip":
        key = _file_key(path)
        if key not in _ZIP_TREES:
            _ZIP_TREES[key] = _zip_tree(path)
        tree = _ZIP_TREES[key]
        return FolderSource(path, True, tree) if tree else None
    if path.is_dir():
        tree = _dir_tree(path)
        return FolderSource(path, False, tree) if tree else None
    return None


def ordered_entries(source: FolderSource, split: str, classes: Sequence[str]) -> list[tuple[int, str]]:
    """(label, member) pairs interleaved round-robin over classes (see the module docstring)."""
    per_class = [source.tree[split].get(name, []) for name in classes]
    entries: list[tuple[int, str]] = []
    for rank in range(max((len(m) for m in per_class), default=0)):
        entries.extend((label, members[rank]) for label, members in enumerate(per_class) if rank < len(members))
    return entries


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one image to uint8 (C, H, W) (data/images.py reads the modes); 16-bit images are refused."""
    array = read_image(data, name)
    if array.dtype != np.uint8:
        raise DataFileError(f"{name}: a 16-bit image; a data set folder holds 8-bit images")
    return array


def _decode_range(source: FolderSource, members: Sequence[str],
                  shape: tuple[int, int, int] | None) -> np.ndarray:
    out: np.ndarray | None = None
    archive = zipfile.ZipFile(source.path) if source.is_zip else None
    try:
        for index, member in enumerate(tqdm(members, desc=f"decoding {source.path.name}", unit="img",
                                            disable=None if len(members) > 2000 else True)):
            where = f"{source.path}:{member}" if source.is_zip else str(source.path / member)
            data = archive.read(member) if archive is not None else (source.path / member).read_bytes()
            image = decode_image(data, where)
            if out is None:
                shape = shape or image.shape  # type: ignore[assignment]
                out = np.empty((len(members), *shape), dtype=np.uint8)  # type: ignore[misc]
            if image.shape != out.shape[1:]:
                raise DataFileError(
                    f"{where}: image is {image.shape} (C, H, W) but the others are {out.shape[1:]}; "
                    "all images of a folder data set must share one size and channel count"
                )
            out[index] = image
    except (zipfile.BadZipFile, OSError) as error:
        raise DataFileError(f"{source.path}: cannot read images: {error}") from None
    finally:
        if archive is not None:
            archive.close()
    if out is None:
        return np.empty((0, *(shape or (0, 0, 0))), dtype=np.uint8)
    return out


def _source_key(source: FolderSource, split: str, classes: Sequence[str]) -> str:
    if source.is_zip:
        file_key = _file_key(source.path)
        if file_key not in _ZIP_HASHES:
            _ZIP_HASHES[file_key] = sha256_file(source.path)
        content = _ZIP_HASHES[file_key]
    else:  # a directory has no single hash: key on every file's name, size and mtime
        listing = []
        for members in source.tree[split].values():
            for member in members:
                stat = (source.path / member).stat()
                listing.append(f"{member}\0{stat.st_size}\0{stat.st_mtime_ns}")
        content = sha256_bytes("\n".join(listing).encode())
    return sha256_bytes(f"{CACHE_FORMAT}|{content}|{split}|{'/'.join(classes)}".encode())[:24]


def _read_cache(folder: Path, labels_expected: np.ndarray) -> np.ndarray | None:
    """Cached images (memory-mapped), or None if absent or inconsistent with the source's labels."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    count = int(meta.get("count", -1))
    if (meta.get("format") != CACHE_FORMAT or images.ndim != 4 or images.dtype != np.uint8
            or len(images) != count or len(labels) != count or count > len(labels_expected)
            or not np.array_equal(labels, labels_expected[:count])):
        logger.warning("ignoring an inconsistent cache in %s", folder)
        return None
    return images


def _write_cache(folder: Path, images: np.ndarray, labels: np.ndarray, meta: dict) -> None:
    try:
        atomic_write_bytes(folder / "images.npy", npy_bytes(images))
        atomic_write_bytes(folder / "labels.npy", npy_bytes(labels))
        atomic_write_bytes(folder / "meta.json", json.dumps(meta, indent=2).encode())  # written last
        logger.info("cached %d decoded images in %s", len(images), folder)
    except OSError as error:
        logger.warning("could not write the image cache in %s: %s", folder, error)


def load_folder(source: FolderSource, split: str, classes: Sequence[str], limit: int | None,
                cache_dir: Path | None, shape: tuple[int, int, int] | None = None) -> RawImages:
    """Load `split` of `source` with labels indexed by `classes`, decoding at most `limit` images."""
    entries = ordered_entries(source, split, classes)
    if not entries:
        raise DataFileError(f"{source.path}: split {split!r} holds no images of classes {list(classes)}")
    labels_all = np.array([label for label, _ in entries], dtype=np.int64)  # (N,)
    want = len(entries) if limit is None else min(limit, len(entries))
    cache_folder = cache_dir / "imagefolder" / _source_key(source, split, classes) if cache_dir else None

    cached = _read_cache(cache_folder, labels_all) if cache_folder is not None else None
    have = 0 if cached is None else len(cached)
    if cached is not None and have >= want:
        logger.info("loaded %d images of %s from the cache %s", want, source.path, cache_folder)
        images = np.array(cached[:want])  # copy out of the memory map
    else:
        members = [member for _, member in entries[have:want]]
        if cached is not None and have:
            shape = shape or tuple(cached.shape[1:])  # type: ignore[assignment]
        fresh = _decode_range(source, members, shape)
        images = fresh if cached is None or not have else np.concatenate([np.asarray(cached), fresh])
        del cached
        if cache_folder is not None:
            _write_cache(cache_folder, images, labels_all[:want], {
                "format": CACHE_FORMAT, "source": str(source.path), "split": split, "classes": list(classes),
                "count": int(want), "total": len(entries), "shape": list(images.shape[1:]),
            })
    return RawImages(images=images, labels=labels_all[:want].copy(), classes=tuple(classes),
                     source=str(source.path))
