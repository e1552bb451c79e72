"""Property-based tests of the evidence readers: whatever a file holds, load_evidence returns exactly its
pixels in [0, 1] or refuses with one of our errors (never another exception, never a wrong value)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from advforensics.errors import AdvForensicsError
from advforensics.evidence import load_evidence

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int16, np.int64, np.bool_])
SHAPES = st.one_of(
    st.tuples(st.integers(0, 3), st.sampled_from([1, 3]), st.integers(1, 6), st.integers(1, 6)),  # NCHW
    st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 3])),  # NHWC
    st.tuples(st.integers(0, 3), st.integers(1, 6), st.integers(1, 6)),  # NHW
    st.tuples(st.integers(0, 4)),
)


def _expected(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float64) / 65535.0
    return array.astype(np.float64)


@SETTINGS
@given(array=st.builds(lambda d, s: (d, s), DTYPES, SHAPES).flatmap(
    lambda ds: arrays(ds[0], ds[1], elements=None if ds[0] != np.float32 else
                      st.one_of(st.floats(-2, 300, width=32), st.sampled_from([float("nan"), float("inf")])))),
       key=st.sampled_from(["x_adv", "adv_examples", "images", "whatever"]))
def test_npz_arrays_load_exactly_or_are_refused(tmp_path: Path, array: np.ndarray, key: str) -> None:
    path = tmp_path / "e.npz"
    np.savez(path, **{key: array})
    try:
        evidence = load_evidence(path)
    except AdvForensicsError as error:
        assert "\n" not in str(error)
        return
    x = evidence.x.numpy()
    assert x.dtype == np.float32 and x.ndim == 4 and x.min() >= 0 and x.max() <= 1
    assert array.dtype in (np.uint8, np.uint16) or array.dtype.kind == "f"  # ints of other widths are refused
    source = array[:, None] if array.ndim == 3 else array
    if evidence.layout.endswith("NHWC->NCHW"):
        source = source.transpose(0, 3, 1, 2)
    assert np.allclose(x, _expected(source), atol=1e-6)
    assert evidence.rows == list(range(len(array)))


@SETTINGS
@given(data=st.binary(max_size=512), suffix=st.sampled_from([".npz", ".npy", ".png", ".jpg", ".bmp"]))
def test_arbitrary_bytes_are_refused_with_our_error(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"e{suffix}"
    path.write_bytes(data)
    with pytest.raises(AdvForensicsError):
        load_evidence(path)


@SETTINGS
@given(data=st.binary(min_size=1, max_size=64), cut=st.integers(0, 400))
def test_corrupted_npz_is_refused_or_read_exactly(tmp_path: Path, data: bytes, cut: int) -> None:
    """A real .npz with bytes overwritten somewhere: refused, or (if the damage missed the data) exact."""
    array = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    buffer = io.BytesIO()
    np.savez(buffer, x_adv=array)
    raw = bytearray(buffer.getvalue())
    raw[cut: cut + len(data)] = data
    path = tmp_path / "e.npz"
    path.write_bytes(bytes(raw))
    try:
        evidence = load_evidence(path)
    except AdvForensicsError:
        return
    assert evidence.x.shape == (2, 1, 4, 4) and np.allclose(evidence.x.numpy() * 255, array)


@SETTINGS
@given(pixels=arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6), st.just(3))),
       mode=st.sampled_from(["L", "RGB", "P", "1", "I;16", "RGBA", "LA"]))
def test_png_modes_read_as_their_pixels(tmp_path: Path, pixels: np.ndarray, mode: str) -> None:
    """Every PNG mode reads as the colours it shows: a palette through its palette, 1-bit as 0/1, 16-bit
    at 16 bits, alpha dropped with the stored colours kept."""
    rgb = Image.fromarray(pixels, "RGB")
    if mode == "P":
        image = rgb.quantize(colors=16)
        expected = np.asarray(image.convert("RGB")).transpose(2, 0, 1) / 255.0
    elif mode == "1":
        image = rgb.convert("1")
        expected = (np.asarray(image)[None]).astype(np.float64)
    elif mode == "I;16":
        deep = pixels[..., 0].astype(np.uint16) * 257 + pixels[..., 1]
        image = Image.fromarray(deep)
        expected = deep[None] / 65535.0
    elif mode in ("RGBA", "LA"):
        base = rgb if mode == "RGBA" else rgb.convert("L")
        image = base.copy()
        image.putalpha(Image.fromarray(pixels[..., 2]))
        expected = np.asarray(base, dtype=np.float64) / 255.0
        expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    else:
        image = rgb.convert(mode)
        array = np.asarray(image, dtype=np.float64) / 255.0
        expected = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    path = tmp_path / "e.png"
    image.save(path)
    evidence = load_evidence(path)
    assert np.allclose(evidence.x[0].numpy(), expected, atol=1e-6)
