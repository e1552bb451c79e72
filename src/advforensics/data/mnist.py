"""MNIST and Fashion-MNIST from the canonical IDX files (gzipped or not), content-verified.

Files are looked for in data_dir/<name>/ (and torchvision's <Name>/raw/ layout), then data_dir itself.
MNIST is verified by the md5 of the DECOMPRESSED bytes, so a re-gzipped copy (like the one in
../shared/data) still verifies; for Fashion-MNIST only the published .gz md5s are known, so its files
must be the published archives (or verify by content once someone records the decompressed md5s).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from advforensics.data.download import download_file
from advforensics.data.files import find_first, md5_bytes, md5_file, missing_files_error, read_maybe_gzip
from advforensics.data.idx import parse_idx
from advforensics.data.spec import DatasetSpec, FileSpec, LoadRequest, RawImages, candidate_dirs, register_dataset
from advforensics.errors import DataFileError

logger = logging.getLogger(__name__)

_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
# split -> (images file, labels file); names without .gz
_SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_SIZES = {"train": 60000, "test": 10000}


def _files(mirrors: tuple[str, ...], md5s: dict[str, tuple[str | None, str]]) -> tuple[FileSpec, ...]:
    return tuple(FileSpec(name=f"{stem}.gz", md5=content, archive_md5=archive,
                          urls=tuple(m + f"{stem}.gz" for m in mirrors))
                 for stem, (content, archive) in md5s.items())


MNIST_SPEC = DatasetSpec(
    name="mnist",
    description="MNIST handwritten digits, 60000 train / 10000 test, canonical IDX files",
    classes=tuple(str(d) for d in range(10)), shape=(1, 28, 28), splits=("train", "test"),
    source_kind="files", sizes=dict(_SIZES), subdirs=("mnist", "MNIST/raw"),
    url="http://yann.lecun.com/exdb/mnist/",
    files=_files(_MNIST_MIRRORS, {  # stem: (md5 of the decompressed file, md5 of the published .gz)
        "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", "ec29112dd5afa0611ce80d1b7f02629c"),
    }),
)

FASHION_SPEC = DatasetSpec(
    name="fashion-mnist",
    description="Zalando's Fashion-MNIST, 60000 train / 10000 test, canonical IDX files",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    shape=(1, 28, 28), splits=("train", "test"), source_kind="files", sizes=dict(_SIZES),
    subdirs=("fashion-mnist", "FashionMNIST/raw"), url="https://github.com/zalandoresearch/fashion-mnist",
    files=_files(_FASHION_MIRRORS, {  # only the published .gz md5s are known
        "train-images-idx3-ubyte": (None, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte": (None, "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte": (None, "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte": (None, "bb300cfdad3c16e7a12a480ee83cd310"),
    }),
    notes="verified by the published .gz md5 (decompressed md5s not recorded)",
)


def _file_spec(spec: DatasetSpec, stem: str) -> FileSpec:
    return next(f for f in spec.files if f.name == f"{stem}.gz")


def verify_content(path: Path, content: bytes, expected: FileSpec) -> None:
    """Accept the file if its decompressed content or (failing that) the file itself has a known md5."""
    if expected.md5 is not None:
        got = md5_bytes(content)
        if got != expected.md5:
            raise DataFileError(f"{path}: content md5 {got} does not match the expected {expected.md5} "
                                "(corrupt or a different data set); delete it and download again")
        return
    if expected.archive_md5 is not None:
        got = md5_file(path)
        if got != expected.archive_md5:
            raise DataFileError(f"{path}: md5 {got} does not match the published {expected.archive_md5} "
                                f"of {expected.name}; use the published file")
        return
    logger.warning("%s: no checksum known; content not verified", path)


def _download_verifier(expected: FileSpec):  # noqa: ANN202 - small closure
    def verify(tmp: Path, _md5: str) -> str | None:
        if expected.md5 is None:
            return f"md5 {_md5} != expected {expected.archive_md5}"
        try:
            got = md5_bytes(read_maybe_gzip(tmp))
        except DataFileError as error:
            return str(error)
        return None if got == expected.md5 else f"content md5 {got} != expected {expected.md5}"
    return verify


def _locate(request: LoadRequest, stem: str) -> Path:
    spec = request.spec
    dirs = candidate_dirs(spec, request.data_dir)
    found = find_first(dirs, (f"{stem}.gz", stem))
    if found is not None:
        return found
    if request.download:
        expected = _file_spec(spec, stem)
        return download_file(expected.urls, dirs[0] / expected.name, md5=expected.archive_md5,
                             verify=_download_verifier(expected))
    expected_names = [f.name for f in spec.files if f.name.startswith(_SPLIT_FILES[request.split])]
    raise missing_files_error(spec.name, expected_names or [f"{stem}.gz"], dirs, downloadable=True)


def _read(request: LoadRequest, stem: str, ndim: int) -> tuple[np.ndarray, Path]:
    path = _locate(request, stem)
    content = read_maybe_gzip(path)
    verify_content(path, content, _file_spec(request.spec, stem))
    array = parse_idx(content, source=str(path))
    if array.ndim != ndim or array.dtype != np.uint8:
        raise DataFileError(f"{path}: expected a {ndim}-D uint8 IDX array, found {array.ndim}-D {array.dtype}")
    return array, path


def load_idx_pair(request: LoadRequest) -> RawImages:
    images_stem, labels_stem = _SPLIT_FILES[request.split]
    missing = [stem for stem in (images_stem, labels_stem)
               if find_first(candidate_dirs(request.spec, request.data_dir), (f"{stem}.gz", stem)) is None]
    if missing and not request.download:
        raise missing_files_error(request.spec.name, [f"{s}.gz" for s in (images_stem, labels_stem)],
                                  candidate_dirs(request.spec, request.data_dir), downloadable=True)
    images, images_path = _read(request, images_stem, 3)  # (N, 28, 28)
    labels, labels_path = _read(request, labels_stem, 1)  # (N,)
    if len(images) != len(labels):
        raise DataFileError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if images.shape[1:] != (28, 28) or (labels.size and labels.max() >= len(request.spec.classes)):
        raise DataFileError(f"{images_path}: unexpected image size {images.shape[1:]} or label range")
    return RawImages(images=images[:, None], labels=labels.astype(np.int64), classes=request.spec.classes,
                     source=str(images_path))


register_dataset(MNIST_SPEC)(load_idx_pair)
register_dataset(FASHION_SPEC)(load_idx_pair)
