"""File formats and their safety: IDX parsing, the restricted unpickler, CIFAR-10 batches, downloads."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from advforensics.data import load_dataset
from advforensics.data.cifar import load_batch_dir, load_batches
from advforensics.data.download import download_file
from advforensics.data.files import md5_bytes
from advforensics.data.idx import parse_idx, read_idx
from advforensics.data.safe_pickle import restricted_loads
from advforensics.data.spec import CACHE_DIR_ENV
from advforensics.errors import DataFileError


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))


def _idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# --- IDX ---------------------------------------------------------------------------------------------

def test_idx_parser_equals_mlxtend_on_real_mnist(shared_data_dir: Path, tmp_path: Path) -> None:
    """The hand-written parser against a library reader (mlxtend.data.loadlocal_mnist) on real files."""
    from mlxtend.data import loadlocal_mnist

    paths = {}
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        paths[stem] = tmp_path / stem
        paths[stem].write_bytes(gzip.decompress((shared_data_dir / "mnist" / f"{stem}.gz").read_bytes()))
    ref_x, ref_y = loadlocal_mnist(str(paths["t10k-images-idx3-ubyte"]), str(paths["t10k-labels-idx1-ubyte"]))
    images, _ = read_idx(shared_data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels, content = read_idx(shared_data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.array_equal(images.reshape(10000, -1), ref_x) and np.array_equal(labels, ref_y)
    assert md5_bytes(content) == "27ae3e4e09519cfbb04c329615203637"


@pytest.mark.parametrize(("dtype", "code"), [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C),
                                             (np.float32, 0x0D), (np.float64, 0x0E)])
def test_idx_round_trip_of_every_type(dtype, code) -> None:
    array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4) if dtype != np.uint8 \
        else np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    parsed = parse_idx(_idx_bytes(array, code))
    assert parsed.dtype == np.dtype(dtype) and np.array_equal(parsed, array)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: b"\x01" + b[1:], "bad IDX magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "bad IDX magic"),
    (lambda b: b[:6], "truncated IDX header"),
    (lambda b: b[:2], "too short"),
])
def test_idx_corruption_is_detected(mutate, message) -> None:
    data = _idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8), 0x08)
    with pytest.raises(DataFileError, match=message):
        parse_idx(mutate(data), source="some-file")


def test_not_a_gzip_file_named_gz(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx1-ubyte.gz"
    bad.write_bytes(b"plain bytes")
    with pytest.raises(DataFileError, match="x-idx1-ubyte.gz is not a gzip file"):
        read_idx(bad)


# --- the restricted unpickler ------------------------------------------------------------------------

class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('pwned').touch()",))


def test_restricted_unpickler_refuses_os_system_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    payload = pickle.dumps({"data": _Evil(f"touch {marker}")}, protocol=2)
    with pytest.raises(DataFileError, match="system.*not allowed"):
        restricted_loads(payload, "evil.pkl")
    assert not marker.exists()
    with pytest.raises(DataFileError, match="eval.*not allowed"):
        restricted_loads(pickle.dumps(_EvalEvil()), "evil2.pkl")


def test_restricted_unpickler_reads_arrays_and_containers_like_pickle() -> None:
    obj = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "labels": [1, 2, 3], "name": "batch 1"}
    for protocol in (3, 4):
        data = pickle.dumps(obj, protocol=protocol)
        loaded = restricted_loads(data)
        reference = pickle.loads(data)  # trusted: we made it
        assert loaded.keys() == reference.keys() and loaded["labels"] == reference["labels"]
        assert np.array_equal(loaded["data"], reference["data"]) and loaded["data"].dtype == np.uint8


def test_restricted_unpickler_garbage_is_a_data_file_error() -> None:
    with pytest.raises(DataFileError, match="corrupt"):
        restricted_loads(b"\x80\x04garbage", "junk")


# --- CIFAR-10 pickled batches ------------------------------------------------------------------------

def _short_string(value: bytes) -> bytes:
    return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING: a Python 2 str


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """Pickle bytes laid out as Python 2's cPickle (protocol 2) wrote the official batches: str keys as
    BINSTRING and the array via numpy.core.multiarray._reconstruct, which Python 3 cannot emit."""
    rows, cols = data.shape
    raw = data.tobytes()
    out = b"\x80\x02}q\x00(" + _short_string(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _short_string(b"b") + b"\x87R"
    out += b"(K\x01M" + rows.to_bytes(2, "little") + b"M" + cols.to_bytes(2, "little") + b"\x86"
    out += b"cnumpy\ndtype\n" + _short_string(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + _short_string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + len(raw).to_bytes(4, "little") + raw + b"tb"
    out += _short_string(b"labels") + b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"eu."
    return out


def test_python2_style_batch_is_read_by_the_restricted_unpickler() -> None:
    data = np.arange(6 * 3072, dtype=np.int64).astype(np.uint8).reshape(6, 3072)
    batch = restricted_loads(_py2_batch(data, [1, 2, 3, 4, 5, 9]))
    assert batch["labels"] == [1, 2, 3, 4, 5, 9] and batch["data"].dtype == np.uint8
    assert np.array_equal(batch["data"], data)


def _make_batches(directory: Path, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic `cifar-10-batches-py/` (same structure as the official one, different bytes)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        (directory / name).write_bytes(_py2_batch(data, labels))
        arrays[name] = data
    return arrays


def test_synthetic_batches_with_wrong_checksums_are_refused(tmp_path: Path) -> None:
    _make_batches(tmp_path / "cifar10" / "cifar-10-batches-py")
    with pytest.raises(DataFileError, match="data_batch_1: md5 .* does not match the official"):
        load_dataset("cifar10", "train", data_dir=tmp_path)


def test_batch_reader_parses_verified_batches(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    arrays = _make_batches(directory)
    md5s = {name: md5_bytes((directory / name).read_bytes()) for name in arrays}
    train = load_batch_dir(directory, "train", md5s=md5s)
    assert train.images.shape == (20, 3, 32, 32) and train.labels.shape == (20,)
    assert np.array_equal(train.images[:4].reshape(4, -1), arrays["data_batch_1"])
    assert load_batch_dir(directory, "test", md5s=md5s).images.shape == (4, 3, 32, 32)


def test_malicious_batch_with_matching_checksum_is_still_not_executed(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    _make_batches(directory)
    marker = tmp_path / "executed"
    (directory / "test_batch").write_bytes(pickle.dumps({"data": _Evil(f"touch {marker}"), "labels": []}))
    md5s = {name: md5_bytes(p.read_bytes()) for name, p in ((p.name, p) for p in directory.iterdir())}
    with pytest.raises(DataFileError, match="not allowed"):
        load_batch_dir(directory, "test", md5s=md5s)
    assert not marker.exists()


def test_checksum_is_checked_before_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = pickle.dumps(_Evil(f"touch {marker}"))
    unpickled = []
    with pytest.raises(DataFileError, match="refusing to unpickle"):
        load_batches(lambda name: unpickled.append(name) or evil, "x", "test")
    assert not marker.exists()


def test_batch_with_wrong_structure_is_refused(tmp_path: Path) -> None:
    bad = pickle.dumps({"data": np.zeros((2, 10), dtype=np.uint8), "labels": [0, 1]}, protocol=4)
    with pytest.raises(DataFileError, match="3072"):
        load_batches(lambda name: bad, "x", "test", md5s={"test_batch": md5_bytes(bad)})


def test_tar_gz_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    batches = tmp_path / "src" / "cifar-10-batches-py"
    _make_batches(batches)
    archive = tmp_path / "data" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    with pytest.raises(DataFileError, match="cifar-10-python.tar.gz: md5 .* official"):
        load_dataset("cifar10", "test", data_dir=tmp_path / "data")


# --- downloads ---------------------------------------------------------------------------------------

def test_download_from_file_url_verifies_and_renames(tmp_path: Path) -> None:
    source = tmp_path / "remote" / "blob.bin"
    source.parent.mkdir()
    source.write_bytes(os.urandom(3000))
    target = tmp_path / "local" / "blob.bin"
    missing = (tmp_path / "remote" / "missing.bin").as_uri()
    got = download_file([missing, source.as_uri()], target, md5=md5_bytes(source.read_bytes()))
    assert got == target and target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["blob.bin"]  # no temp files left


def test_download_with_bad_checksum_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "remote.bin"
    source.write_bytes(b"x" * 5000)
    target = tmp_path / "local" / "blob.bin"
    with pytest.raises(DataFileError, match="checksum mismatch"):
        download_file([source.as_uri()], target, md5="0" * 32)
    assert list(target.parent.iterdir()) == []
    with pytest.raises(DataFileError, match="without a checksum"):
        download_file([source.as_uri()], target)


def _serve_from(folder: Path, monkeypatch: pytest.MonkeyPatch, corrupt: bool = False) -> list[str]:
    """Make urlopen serve any URL's basename from `folder` (no internet here)."""
    requested: list[str] = []

    def fake_urlopen(request, timeout=None):
        url = request.full_url if hasattr(request, "full_url") else str(request)
        requested.append(url)
        data = (folder / url.rsplit("/", 1)[-1]).read_bytes()
        return io.BytesIO(data[: len(data) // 3] if corrupt else data)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return requested


def test_mnist_download_end_to_end(shared_data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The shared copy is re-gzipped, so its .gz md5 differs from the published one: the download is
    accepted through the md5 of its decompressed content."""
    requested = _serve_from(shared_data_dir / "mnist", monkeypatch)
    with pytest.raises(DataFileError, match="--download"):
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert requested == []  # download=False never touches the network
    ds = load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    assert len(ds) == 10000 and len(requested) == 2 and requested[0].startswith("https://")
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_corrupt_download_raises_and_leaves_nothing(shared_data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    requested = _serve_from(shared_data_dir / "mnist", monkeypatch, corrupt=True)
    with pytest.raises(DataFileError, match="could not download t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    assert len(requested) == 2  # both mirrors tried
    assert not any((tmp_path / "mnist").iterdir())


def test_tar_gz_reader_reads_members_without_extracting(tmp_path: Path, monkeypatch) -> None:
    import advforensics.data.cifar as cifar
    from advforensics.data.files import md5_file
    from advforensics.data.spec import FileSpec

    batches = tmp_path / "src" / "cifar-10-batches-py"
    arrays = _make_batches(batches)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    md5s = {name: md5_bytes((batches / name).read_bytes()) for name in arrays}
    monkeypatch.setattr(cifar, "ARCHIVE", FileSpec(name=archive.name, archive_md5=md5_file(archive)))
    test = cifar.load_batch_archive(archive, "test", md5s=md5s)
    assert np.array_equal(test.images.reshape(4, -1), arrays["test_batch"])
    assert not (tmp_path / "cifar-10-batches-py").exists()  # nothing extracted


def test_fashion_mnist_files_must_match_the_published_archives(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8), 0x08)))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros(2, dtype=np.uint8), 0x08)))
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte.gz: md5 .* published"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path)
