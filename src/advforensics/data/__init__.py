"""Data sets behind one registry: embedded (digits, mnist-5k), MNIST / Fashion-MNIST (IDX), CIFAR-10
(pickled batches or image folders), and generic image folders; download + checksums for online users.

    >>> from advforensics.data import load_dataset
    >>> ds = load_dataset("mnist-5k", split="test")
    >>> ds.images.shape, ds.info.sha256[:12]   # (1000, 1, 28, 28) float32 in [0, 1]
"""

from advforensics.data import cifar, embedded, folders, mnist  # noqa: F401  (register the loaders)
from advforensics.data.api import content_sha256, dataset_spec, list_datasets, load_dataset
from advforensics.data.spec import (
    DATASETS, DatasetInfo, DatasetSpec, FileSpec, ImageDataset, resolve_cache_dir, resolve_data_dir,
)

__all__ = [
    "DATASETS", "DatasetInfo", "DatasetSpec", "FileSpec", "ImageDataset", "content_sha256", "dataset_spec",
    "list_datasets", "load_dataset", "resolve_cache_dir", "resolve_data_dir",
]
