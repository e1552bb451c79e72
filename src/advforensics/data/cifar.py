"""CIFAR-10 from the official python batches (directory or .tar.gz) or from image folders (dir or zip).

Search order in each of data_dir/{cifar10,cifar-10,cifar10-jpeg} and then data_dir:
`cifar-10-batches-py/`, `cifar-10-python.tar.gz`, an image tree `train/<class>/*`, then the zips
`cifar10.zip`, `cifar10-jpeg.zip`, `cifar-10.zip`; data_dir may also be such a zip itself. The pickled
batches are lossless; image folders may not be (the JPEG copy in ../shared/data is quality ~75).

The batches are pickles: every file is checked against the official md5 BEFORE it is read, and then
unpickled with `safe_pickle.restricted_loads`, which can rebuild numpy arrays and nothing else.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from advforensics.data.download import download_file
from advforensics.data.files import md5_bytes, md5_file, missing_files_error
from advforensics.data.imagefolder import FolderSource, load_folder, open_folder_source
from advforensics.data.safe_pickle import restricted_loads
from advforensics.data.spec import DatasetSpec, FileSpec, LoadRequest, RawImages, candidate_dirs, register_dataset
from advforensics.errors import DataFileError

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BATCH_DIR = "cifar-10-batches-py"
ARCHIVE = FileSpec(name="cifar-10-python.tar.gz", archive_md5="c58f30108f718f92721af3b95e74349a",
                   urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",))
# Official md5s of the pickled batches (https://www.cs.toronto.edu/~kriz/cifar.html, as torchvision lists)
BATCH_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SPLIT_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
ZIP_NAMES = ("cifar10.zip", "cifar10-jpeg.zip", "cifar-10.zip")

CIFAR10_SPEC = DatasetSpec(
    name="cifar10",
    description="CIFAR-10, 50000 train / 10000 test 32x32 colour images: official python batches "
                "(lossless) or train/<class>/ image folders, also zipped",
    classes=CIFAR10_CLASSES, shape=(3, 32, 32), splits=("train", "test"), source_kind="files",
    sizes={"train": 50000, "test": 10000}, subdirs=("cifar10", "cifar-10", "cifar10-jpeg"),
    files=(ARCHIVE, *(FileSpec(name=f"{BATCH_DIR}/{n}", md5=m) for n, m in BATCH_MD5.items())),
    url="https://www.cs.toronto.edu/~kriz/cifar.html",
    notes="image folders/zips (e.g. cifar10-jpeg.zip) are accepted too; JPEG copies are lossy",
)


def _parse_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_loads(data, source)
    if not isinstance(batch, dict):
        raise DataFileError(f"{source}: expected a dict batch, found {type(batch).__name__}")
    images, labels = batch.get("data"), batch.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != 3 * 32 * 32:
        raise DataFileError(f"{source}: 'data' is not a (N, 3072) uint8 array")
    labels_array = np.asarray(labels, dtype=np.int64) if isinstance(labels, list) else None
    if labels_array is None or labels_array.shape != (len(images),) or \
            (labels_array.size and (labels_array.min() < 0 or labels_array.max() >= len(CIFAR10_CLASSES))):
        raise DataFileError(f"{source}: 'labels' is not a list of {len(images)} labels in 0..9")
    return images.reshape(-1, 3, 32, 32), labels_array  # (N, 3, 32, 32), (N,)


def _check_md5(data: bytes, expected: str | None, source: str) -> None:
    got = md5_bytes(data)
    if expected is None or got != expected:
        raise DataFileError(f"{source}: md5 {got} does not match the official {expected}; refusing to "
                            "unpickle a file that is not the official CIFAR-10 batch")


def load_batches(read: Callable[[str], bytes], where: str, split: str,
                 md5s: Mapping[str, str] = BATCH_MD5) -> RawImages:
    """Load the batches of `split` through `read(batch_name) -> bytes`, verifying md5 before unpickling."""
    parts_x, parts_y = [], []
    for name in SPLIT_BATCHES[split]:
        source = f"{where}/{name}"
        data = read(name)
        _check_md5(data, md5s.get(name), source)
        x, y = _parse_batch(data, source)
        parts_x.append(x)
        parts_y.append(y)
    return RawImages(images=np.concatenate(parts_x), labels=np.concatenate(parts_y),
                     classes=CIFAR10_CLASSES, source=where)


def load_batch_dir(directory: Path, split: str, md5s: Mapping[str, str] = BATCH_MD5) -> RawImages:
    """The extracted `cifar-10-batches-py/` directory."""
    def read(name: str) -> bytes:
        path = directory / name
        if not path.is_file():
            raise DataFileError(f"{directory}: missing {name} (expected {', '.join(SPLIT_BATCHES[split])})")
        return path.read_bytes()
    return load_batches(read, str(directory), split, md5s)


def load_batch_archive(archive: Path, split: str, md5s: Mapping[str, str] = BATCH_MD5) -> RawImages:
    """The official `cifar-10-python.tar.gz`, read member by member without extracting anything."""
    got = md5_file(archive)
    if got != ARCHIVE.archive_md5:
        raise DataFileError(f"{archive}: md5 {got} does not match the official {ARCHIVE.archive_md5}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            def read(name: str) -> bytes:
                member = tar.extractfile(f"{BATCH_DIR}/{name}")
                if member is None:
                    raise DataFileError(f"{archive}: {BATCH_DIR}/{name} is not a regular file")
                return member.read()
            return load_batches(read, str(archive), split, md5s)
    except (tarfile.TarError, KeyError, OSError, EOFError) as error:
        raise DataFileError(f"{archive}: cannot read the archive: {error}") from None


def _folder_sources(dirs: list[Path], data_dir: Path) -> list[FolderSource]:
    """Image trees among the candidates: data_dir itself if a zip, each dir, then the known zip names."""
    paths = [data_dir] if data_dir.is_file() else []
    for directory in dirs:
        paths.append(directory)
        paths.extend(directory / name for name in ZIP_NAMES)
    sources = []
    for path in paths:
        source = open_folder_source(path) if path.exists() else None
        if source is not None and set(source.classes()) & set(CIFAR10_CLASSES):
            sources.append(source)
    return sources


@register_dataset(CIFAR10_SPEC)
def load_cifar10(request: LoadRequest) -> RawImages:
    dirs = candidate_dirs(request.spec, request.data_dir) if request.data_dir.is_dir() else []
    for directory in dirs:
        if (directory / BATCH_DIR).is_dir():
            return load_batch_dir(directory / BATCH_DIR, request.split)
        if (directory / ARCHIVE.name).is_file():
            return load_batch_archive(directory / ARCHIVE.name, request.split)
    for source in _folder_sources(dirs, request.data_dir):
        if set(source.classes()) != set(CIFAR10_CLASSES):
            raise DataFileError(f"{source.path}: class folders {source.classes()} are not the CIFAR-10 classes "
                                f"{list(CIFAR10_CLASSES)}")
        if request.split not in source.tree:
            raise DataFileError(f"{source.path}: no {request.split}/<class>/ folders (found {source.splits()})")
        return load_folder(source, request.split, CIFAR10_CLASSES, request.limit, request.cache_dir,
                           shape=CIFAR10_SPEC.shape)
    searched = dirs or [request.data_dir]
    if request.download:
        target = searched[0] if dirs else request.data_dir / request.spec.subdirs[0]
        archive = download_file(ARCHIVE.urls, target / ARCHIVE.name, md5=ARCHIVE.archive_md5)
        return load_batch_archive(archive, request.split)
    raise missing_files_error(
        request.spec.name,
        [f"{BATCH_DIR}/ ({', '.join(SPLIT_BATCHES[request.split])})", ARCHIVE.name,
         f"{request.split}/<class>/*.png|jpg", *ZIP_NAMES],
        searched, downloadable=True)
