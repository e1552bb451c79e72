"""advforensics.evidence: foreign evidence files read into (N, C, H, W) float32 in [0, 1], and written back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from advforensics.cli.main import cli
from advforensics.errors import DataFileError, InputValidationError
from advforensics.evidence import Evidence, load_evidence, save_evidence, save_images

RNG = np.random.default_rng(0)


def _floats(*shape: int) -> np.ndarray:
    return RNG.random(shape, dtype=np.float32)


@pytest.mark.parametrize("key", ["x_adv", "adv", "adv_x", "adversarial", "adv_examples", "images", "X", "inputs"])
def test_npz_foreign_key_names(tmp_path: Path, key: str) -> None:
    x = _floats(4, 1, 5, 6)
    np.savez(tmp_path / "ev.npz", **{key: x, "noise": np.zeros((4, 1, 5, 6))})
    ev = load_evidence(str(tmp_path / "ev.npz"))  # a str works as well as a Path
    assert isinstance(ev, Evidence) and ev.x.dtype == torch.float32
    assert torch.equal(ev.x, torch.from_numpy(x)) and ev.layout == f"npz:{key} NCHW"
    assert ev.names == [f"ev.npz[{i}]" for i in range(4)] and ev.rows == [0, 1, 2, 3] and ev.dropped == []


def test_npz_key_order_only_array_and_ambiguous_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "both.npz", x=np.zeros((2, 1, 4, 4), np.float32), x_adv=np.ones((2, 1, 4, 4), np.float32))
    assert load_evidence(tmp_path / "both.npz").x.min() == 1  # x_adv comes first
    np.savez(tmp_path / "one.npz", whatever=_floats(2, 3, 4, 4), y=np.array([1, 2]))
    assert load_evidence(tmp_path / "one.npz").layout == "npz:whatever NCHW"  # the only image array
    np.savez(tmp_path / "two.npz", a=_floats(2, 1, 4, 4), b=_floats(2, 1, 4, 4))
    with pytest.raises(InputValidationError, match=r"\['a', 'b'\].*x_adv"):
        load_evidence(tmp_path / "two.npz")


def test_nhwc_and_3d_layouts(tmp_path: Path) -> None:
    x = _floats(3, 6, 5, 3)  # NHWC
    np.savez(tmp_path / "nhwc.npz", adv_examples=x)
    ev = load_evidence(tmp_path / "nhwc.npz")
    assert ev.x.shape == (3, 3, 6, 5) and torch.equal(ev.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ev.layout == "npz:adv_examples NHWC->NCHW"
    assert ev.summary() == "3 examples from nhwc.npz (adv_examples, NHWC->NCHW)"
    np.save(tmp_path / "gray.npy", _floats(2, 5, 5))
    ev = load_evidence(tmp_path / "gray.npy")
    assert ev.x.shape == (2, 1, 5, 5) and ev.layout == "npy NHW->NCHW"
    # ambiguous (axis 1 and axis 3 both 3): NCHW unless channels says otherwise
    np.savez(tmp_path / "amb.npz", x=_floats(2, 3, 4, 3))
    assert load_evidence(tmp_path / "amb.npz").x.shape == (2, 3, 4, 3)
    assert load_evidence(tmp_path / "amb.npz", channels=3, size=(3, 4)).x.shape == (2, 3, 3, 4)


def test_success_mask_drops_rows_and_keeps_labels(tmp_path: Path) -> None:
    x = _floats(5, 1, 4, 4)
    mask = np.array([True, False, True, True, False])
    np.savez(tmp_path / "advs.npz", x_adv=x, is_adv=mask, y_true=np.array([9, 8, 7, 6, 5]))
    ev = load_evidence(tmp_path / "advs.npz")
    assert ev.rows == [0, 2, 3] and ev.dropped == [1, 4] and ev.names == ["advs.npz[0]", "advs.npz[2]", "advs.npz[3]"]
    assert torch.equal(ev.x, torch.from_numpy(x[mask]))
    assert ev.labels is not None and ev.labels.tolist() == [9, 7, 6]
    assert ev.summary() == "3 examples from advs.npz (x_adv, NCHW), with labels, 2 rows dropped by its success mask"
    np.savez(tmp_path / "none.npz", x_adv=x, success=np.zeros(5, bool))
    with pytest.raises(InputValidationError, match="no successful"):
        load_evidence(tmp_path / "none.npz")


def test_dtype_scaling(tmp_path: Path) -> None:
    np.savez(tmp_path / "u8.npz", x=np.full((1, 1, 2, 2), 51, np.uint8))
    np.savez(tmp_path / "u16.npz", x=np.full((1, 1, 2, 2), 13107, np.uint16))
    np.savez(tmp_path / "f64.npz", x=np.full((1, 1, 2, 2), 0.25, np.float64))
    assert torch.allclose(load_evidence(tmp_path / "u8.npz").x, torch.tensor(0.2))
    assert torch.allclose(load_evidence(tmp_path / "u16.npz").x, torch.tensor(0.2))
    ev = load_evidence(tmp_path / "f64.npz")
    assert ev.x.dtype == torch.float32 and torch.all(ev.x == 0.25)


@pytest.mark.parametrize("array, message", [
    (np.full((2, 1, 3, 3), 200.0, np.float32), "divide by 255"),
    (np.full((2, 1, 3, 3), -0.5, np.float32), "undo the normalisation"),
    (np.array([[[[0.1, np.nan]]], [[[0.1, 0.2]]], [[[np.inf, 0.0]]]], np.float32), "NaN or inf in 2 of 3 rows"),
    (np.zeros((0, 1, 3, 3), np.float32), "no examples"),
    (np.zeros((2, 1, 3, 3), bool), "uint8, uint16 or float"),
    (np.zeros((2, 3), np.float32), "(N, C, H, W)"),
])
def test_bad_values_are_refused_with_a_hint(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "bad.npz", x_adv=array)
    with pytest.raises(InputValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_evidence(tmp_path / "bad.npz")


def test_wrong_size_or_channels(tmp_path: Path) -> None:
    np.savez(tmp_path / "rgb.npz", x=_floats(2, 3, 32, 32))
    with pytest.raises(InputValidationError, match=r"evidence is \(N, 3, 32, 32\), the model takes \(1, 28, 28\)"):
        load_evidence(tmp_path / "rgb.npz", channels=1, size=(28, 28))
    assert load_evidence(tmp_path / "rgb.npz", channels=3, size=(32, 32)).x.shape == (2, 3, 32, 32)


def test_missing_corrupt_and_pickled_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not found"):
        load_evidence(tmp_path / "nowhere.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataFileError) as error:
        load_evidence(tmp_path / "junk.npz")
    assert "\n" not in str(error.value)
    objects = np.empty(2, dtype=object)
    objects[:] = [{"a": 1}, {"b": 2}]
    np.savez(tmp_path / "pickled.npz", x_adv=objects)
    with pytest.raises(DataFileError, match="without unpickling"):
        load_evidence(tmp_path / "pickled.npz")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataFileError, match="cannot read image"):
        load_evidence(tmp_path / "broken.png")


def test_png_modes(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(colors=8)  # mode P
    palette.save(tmp_path / "p.png")
    ev = load_evidence(tmp_path / "p.png")
    assert ev.x.shape == (1, 3, 4, 5) and ev.layout == "png file"
    expected = np.asarray(palette.convert("RGB")).transpose(2, 0, 1) / 255.0
    assert np.allclose(ev.x[0].numpy(), expected)

    bits = RNG.integers(0, 2, (4, 5)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "one.png")  # mode 1
    assert np.array_equal(load_evidence(tmp_path / "one.png").x[0, 0].numpy(), bits.astype(np.float32))

    deep = RNG.integers(0, 65536, (4, 5), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # mode I;16
    assert np.allclose(load_evidence(tmp_path / "deep.png").x[0, 0].numpy(), deep / 65535.0)

    rgba = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")  # alpha dropped, colours kept
    assert np.allclose(load_evidence(tmp_path / "rgba.png").x[0].numpy(), rgba[..., :3].transpose(2, 0, 1) / 255.0)

    Image.new("CMYK", (5, 4)).save(tmp_path / "cmyk.jpg")
    with pytest.raises(InputValidationError, match="mode CMYK"):
        load_evidence(tmp_path / "cmyk.jpg")


def test_jpeg_folder_and_channel_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "jpgs"
    folder.mkdir()
    (folder / "deeper").mkdir()  # not recursed into
    Image.new("RGB", (9, 9)).save(folder / "deeper" / "z.jpg")
    for name, value in (("b.jpg", 200), ("a.jpg", 40), ("c.jpeg", 120)):
        Image.new("L", (6, 7), value).save(folder / name, quality=95)
    (folder / "notes.txt").write_text("not an image")
    ev = load_evidence(folder)
    assert ev.x.shape == (3, 1, 7, 6) and ev.rows == [0, 1, 2] and ev.layout == "jpeg folder"
    assert [Path(n).name for n in ev.names] == ["a.jpg", "b.jpg", "c.jpeg"]
    assert np.allclose(ev.x.mean((1, 2, 3)).numpy(), np.array([40, 200, 120]) / 255.0, atol=2 / 255)
    with pytest.raises(InputValidationError, match="greyscale"):
        load_evidence(folder, channels=3)
    Image.fromarray(RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(InputValidationError, match="colour .*not converted to grey"):
        load_evidence(tmp_path / "colour.png", channels=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputValidationError, match="no .png"):
        load_evidence(empty)


def test_save_evidence_round_trip_and_overwrite(tmp_path: Path) -> None:
    x = torch.rand(4, 1, 5, 5)
    success = torch.tensor([True, True, False, True])
    path = save_evidence(tmp_path / "advs.npz", x, success=success, labels=torch.tensor([3, 1, 4, 1]),
                         meta={"attack": "fgsm"}, extras={"l2": torch.ones(4)})
    with np.load(path, allow_pickle=False) as data:
        assert set(data.keys()) == {"x_adv", "success", "labels", "meta", "l2"}
        assert json.loads(str(data["meta"])) == {"attack": "fgsm"}
    ev = load_evidence(path)
    assert torch.equal(ev.x, x[success]) and ev.rows == [0, 1, 3] and ev.dropped == [2]
    assert ev.labels.tolist() == [3, 1, 1]
    with pytest.raises(InputValidationError, match="advs.npz exists"):
        save_evidence(path, x)
    save_evidence(path, x[:2], overwrite=True)
    assert len(load_evidence(path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["advs.npz"]  # no temporary file left behind
    with pytest.raises(InputValidationError, match="reserved"):
        save_evidence(tmp_path / "b.npz", x, extras={"success": np.ones(4)})


def test_save_images_round_trip(tmp_path: Path) -> None:
    x = torch.round(torch.rand(3, 3, 4, 5) * 255) / 255
    paths = save_images(tmp_path / "pngs", x)
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    assert torch.allclose(load_evidence(tmp_path / "pngs").x, x, atol=1e-6)
    with pytest.raises(InputValidationError, match="not an empty folder"):
        save_images(tmp_path / "pngs", x)
    save_images(tmp_path / "jpgs", x[:, :1], names=["a", "b", "c"], fmt="jpeg", quality=90)
    assert load_evidence(tmp_path / "jpgs").x.shape == (3, 1, 4, 5)


def test_cli_bad_evidence_is_one_error_line(tmp_path: Path) -> None:
    """The evidence is read before the model: a bad file fails fast with exit 2 and one `Error:` line."""
    np.savez(tmp_path / "bad.npz", x_adv=np.full((2, 1, 4, 4), 255.0, np.float32))
    result = CliRunner().invoke(cli, ["attribution", "predict", "--model", str(tmp_path / "m.safetensors"),
                                      str(tmp_path / "bad.npz")])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "divide by 255" in errors[0] and "Traceback" not in result.output
