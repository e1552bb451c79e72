"""The generic `imagefolder` data set: `root/<split>/<class>/*.png|jpg`, root a directory or a zip.

Classes are the sorted union of class folders over all splits (so train and test labels agree); splits
are whatever split folders exist. All images must share one size and channel count.
"""

from __future__ import annotations

from advforensics.data.imagefolder import load_folder, open_folder_source
from advforensics.data.spec import DatasetSpec, LoadRequest, RawImages, register_dataset
from advforensics.errors import DataFileError, InputValidationError

IMAGEFOLDER_SPEC = DatasetSpec(
    name="imagefolder",
    description="your own images: DATA_DIR/<split>/<class>/*.png|jpg (DATA_DIR a directory or a .zip)",
    classes=(), shape=None, splits=(), source_kind="folder",
    notes="classes, shape and splits are discovered from the files; pass the root as data_dir",
)


@register_dataset(IMAGEFOLDER_SPEC)
def load_imagefolder(request: LoadRequest) -> RawImages:
    root = request.data_dir
    if not root.exists():
        raise DataFileError(f"imagefolder: {root} does not exist; pass --data-dir (data_dir=...) pointing at "
                            "a directory or .zip laid out as <split>/<class>/<image>")
    source = open_folder_source(root)
    if source is None:
        raise DataFileError(f"imagefolder: no <split>/<class>/*.png|jpg|jpeg|bmp images found in {root}")
    if request.split not in source.tree:
        raise InputValidationError(f"imagefolder: split {request.split!r} not found in {root}; "
                                   f"available splits: {', '.join(source.splits())}")
    return load_folder(source, request.split, source.classes(), request.limit, request.cache_dir)
