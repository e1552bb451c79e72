"""Bad input, tried as a user would: every command that reads a user file x every kind of bad file.

Each case must end with exit code 2, one `Error: ...` line on stderr, no traceback, and every file in
the workspace byte-identical afterwards (nothing the user gave is overwritten or lost).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from advforensics.cli.options import OutputDir, OutputFile
from advforensics.cli.main import cli


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


def _ok(args: list[str]) -> None:
    result = _invoke(args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def ws(workspace: Path) -> Path:
    """The shared workspace of valid artifacts (conftest.py), with one file per kind of bad input beside it."""
    if not (workspace / "bad").exists():
        _make_bad_files(workspace / "bad")
        _make_serving_files(workspace)
    return workspace


def _png(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


def _make_bad_files(bad: Path) -> None:
    """One file per kind of bad input."""
    bad.mkdir()
    (bad / "empty.npz").write_bytes(b"")
    (bad / "text.npz").write_text("x_adv = [1, 2, 3]\n")
    good = io.BytesIO()
    np.savez(good, x_adv=np.zeros((4, 1, 8, 8), np.float32))
    (bad / "truncated.npz").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    np.savez(bad / "no_arrays.npz")
    objects = np.empty(2, dtype=object)
    objects[:] = [{"a": 1}, {"b": 2}]
    np.savez(bad / "pickled.npz", x_adv=objects)
    np.savez(bad / "nan.npz", x_adv=np.full((2, 1, 8, 8), np.nan, np.float32))
    np.savez(bad / "range.npz", x_adv=np.full((2, 1, 8, 8), 255.0, np.float32))
    np.savez(bad / "shape.npz", x_adv=np.zeros((2, 3, 32, 32), np.float32))
    np.savez(bad / "zero_rows.npz", x_adv=np.zeros((0, 1, 8, 8), np.float32))
    np.savez(bad / "all_failed.npz", x_adv=np.zeros((3, 1, 8, 8), np.float32), success=np.zeros(3, bool))
    np.save(bad / "flat.npy", np.zeros(10, np.float32))
    np.save(bad / "strings.npy", np.array(["a", "b"]))
    # a zip member claiming 2 GiB (its header says so; the cap refuses before reading)
    with zipfile.ZipFile(bad / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_adv.npy", b"\0" * (1 << 20))
    _inflate_declared_size(bad / "bomb.npz", 2 << 30)
    _png(bad / "huge.png", Image.new("L", (5000, 5000)))
    _png(bad / "colour.png", Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)))
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (bad / "fake.png").write_text("not an image")
    Image.new("CMYK", (8, 8)).save(bad / "cmyk.jpg")
    _png(bad / "big16.png", Image.fromarray(np.zeros((40, 40), np.uint16)))
    (bad / "empty_folder").mkdir()
    (bad / "garbage.safetensors").write_bytes(b"\x00\x01 not safetensors")
    (bad / "garbage.json").write_text("{not json")
    (bad / "list.json").write_text("[1, 2]")
    (bad / "labels.csv").write_text("row,attack,victim\n0,fgsm,lenet\n0,fgsm,lenet\n")
    (bad / "notdir").write_text("a file where a folder is expected")
    (bad / "grid_param.json").write_text(json.dumps({"attacks": [{"name": "fgsm", "values": [8], "params": {"foo": 1}}]}))
    (bad / "grid_attack.json").write_text(json.dumps({"attacks": [{"name": "nope", "values": [8]}]}))
    (bad / "grid_nan.json").write_text(json.dumps({"attacks": [{"name": "cw-l2", "values": [float("nan")],
                                                                "implementation": "art"}]}))
    (bad / "grid_values.json").write_text(json.dumps({"attacks": [{"name": "fgsm", "values": ["a lot"]}]}))


def _make_serving_files(ws: Path) -> None:
    """A servable record (ONNX copies), a valid keys file for it and a valid detector: the cases reach the bad file."""
    _ok(["trace", "separate", "--classifier", str(ws / "zoo" / "lenet"), "--copies", "2", "--fit-size", "0",
         "--out", str(ws / "served")])
    _ok(["buyers", "add", "--record", str(ws / "served"), "--keys", str(ws / "bad" / "keys.json"), "--buyer",
         "alice", "--copy", "1"])
    _ok(["queries", "calibrate", "--data", "digits", "--buyers", "4", "--queries", "40", "--false-flag-rate", "0.25", "--out",
         str(ws / "bad" / "detector.json")])


def _inflate_declared_size(path: Path, size: int) -> None:
    """Rewrite a one-member zip's headers to claim `size` uncompressed bytes (a zip bomb's header)."""
    data = bytearray(path.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + 22: local + 26] = (size & 0xFFFFFFFF).to_bytes(4, "little")
    data[central + 24: central + 28] = (size & 0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _copy_of(ws: Path, name: str, edit: Callable[[Path], None]) -> Path:
    """A copy of a valid artifact folder with one edit (the original stays valid)."""
    target = ws / "edited" / f"{name}-{edit.__name__}"
    if not target.exists():
        shutil.copytree(ws / name, target)
        edit(target)
    return target


def _edit_record_json(path: Path) -> None:
    payload = json.loads((path / "record.json").read_text())
    payload["alpha"] = 0.5
    (path / "record.json").write_text(json.dumps(payload))


def _drop_tracer(path: Path) -> None:
    (path / "tracer.safetensors").unlink()


def _flip_weights(path: Path) -> None:
    weights = path / "classifier.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))


def _edit_shard(path: Path) -> None:
    shard = sorted((path / "shards").glob("*.npz"))[0]
    data = bytearray(shard.read_bytes())
    data[-30] ^= 0xFF
    shard.write_bytes(bytes(data))


def _edit_manifest(path: Path) -> None:
    (path / "manifest.json").write_text("{broken")


EVIDENCE_KINDS = ["missing.npz", "empty.npz", "text.npz", "truncated.npz", "no_arrays.npz", "pickled.npz",
                  "nan.npz", "range.npz", "shape.npz", "zero_rows.npz", "all_failed.npz", "flat.npy",
                  "strings.npy", "bomb.npz", "huge.png", "colour.png", "broken.png", "fake.png", "cmyk.jpg",
                  "big16.png", "empty_folder"]
WEIGHTS_KINDS = ["missing", "garbage.safetensors", "garbage.json", "list.json", "empty_folder"]


def _cases() -> list[tuple[str, Callable[[Path], list[str]]]]:
    cases: list[tuple[str, Callable[[Path], list[str]]]] = []
    for kind in EVIDENCE_KINDS:
        cases.append((f"identify-evidence-{kind}", lambda ws, k=kind: [
            "trace", "identify", "--record", str(ws / "copies"), "--examples", str(ws / "bad" / k)]))
        if kind != "missing.npz":  # predict's SOURCE must exist (click says so, in one line too)
            cases.append((f"predict-evidence-{kind}", lambda ws, k=kind: [
                "attribution", "predict", "--model", str(ws / "mtaa.safetensors"), str(ws / "bad" / k)]))
    for kind in EVIDENCE_KINDS[1:]:  # click checks that EVIDENCE exists (one line too)
        cases.append((f"investigate-evidence-{kind}", lambda ws, k=kind: [
            "investigate", str(ws / "bad" / k), "--record", str(ws / "copies"), "--attributor",
            str(ws / "mtaa.safetensors"), "--out", str(ws / "new-report")]))
    for kind in WEIGHTS_KINDS:
        cases += [
            (f"investigate-attributor-{kind}", lambda ws, k=kind: [
                "investigate", str(ws / "advs.npz"), "--attributor", str(ws / "bad" / k), "--out",
                str(ws / "new-report")]),
            (f"models-eval-{kind}", lambda ws, k=kind: ["models", "eval", "--weights", str(ws / "bad" / k),
                                                        "--data", "digits"]),
            (f"attacks-run-{kind}", lambda ws, k=kind: ["attacks", "run", "--attack", "fgsm", "--weights",
                                                        str(ws / "bad" / k), "--data", "digits", "--n", "2"]),
            (f"separate-classifier-{kind}", lambda ws, k=kind: [
                "trace", "separate", "--classifier", str(ws / "bad" / k), "--no-onnx", "--out", str(ws / "new-copies")]),
            (f"experiment-classifier-{kind}", lambda ws, k=kind: [
                "trace", "experiment", "--classifier", str(ws / "bad" / k), "--data", "digits", "--out",
                str(ws / "new-exp")]),
            (f"predict-model-{kind}", lambda ws, k=kind: ["attribution", "predict", "--model", str(ws / "bad" / k),
                                                          str(ws / "advs.npz")]),
            (f"evaluate-model-{kind}", lambda ws, k=kind: [
                "attribution", "evaluate", "--corpus", str(ws / "corpus"), "--model", str(ws / "bad" / k),
                "--out", str(ws / "new-report")]),
            (f"corpus-victims-{kind}", lambda ws, k=kind: [
                "attribution", "corpus", "--data", "digits", "--limit", "8", "--victims", str(ws / "bad" / k),
                "--grid", "small", "--out", str(ws / "new-corpus")]),
        ]
    for edit in (_edit_record_json, _drop_tracer, _flip_weights):
        cases.append((f"identify-record-{edit.__name__}", lambda ws, e=edit: [
            "trace", "identify", "--record", str(_copy_of(ws, "copies", e)), "--examples", str(ws / "advs.npz")]))
        cases.append((f"attacks-copies-{edit.__name__}", lambda ws, e=edit: [
            "attacks", "run", "--attack", "hopskipjump", "--copies", str(_copy_of(ws, "copies", e)), "--copy", "0",
            "--data", "digits", "--n", "2"]))
    for kind in ("missing", "notdir", "empty_folder"):
        cases.append((f"investigate-record-{kind}", lambda ws, k=kind: [
            "investigate", str(ws / "advs.npz"), "--record", str(ws / "bad" / k), "--out", str(ws / "new-report")]))
        cases.append((f"identify-record-{kind}", lambda ws, k=kind: [
            "trace", "identify", "--record", str(ws / "bad" / k), "--examples", str(ws / "advs.npz")]))
    for edit in (_edit_shard, _edit_manifest):
        cases.append((f"train-corpus-{edit.__name__}", lambda ws, e=edit: [
            "attribution", "train", "--corpus", str(_copy_of(ws, "corpus", e)), "--out", str(ws / "new.safetensors")]))
        cases.append((f"evaluate-corpus-{edit.__name__}", lambda ws, e=edit: [
            "attribution", "evaluate", "--corpus", str(_copy_of(ws, "corpus", e)), "--model",
            str(ws / "mtaa.safetensors"), "--out", str(ws / "new-report")]))
    for kind in ("missing", "empty_folder", "notdir"):
        cases.append((f"train-corpus-{kind}", lambda ws, k=kind: [
            "attribution", "train", "--corpus", str(ws / "bad" / k), "--out", str(ws / "new.safetensors")]))
        cases.append((f"heldout-{kind}", lambda ws, k=kind: [
            "attribution", "evaluate", "--corpus", str(ws / "corpus"), "--model", str(ws / "mtaa.safetensors"),
            "--heldout", str(ws / "bad" / k), "--out", str(ws / "new-report")]))
    cases += [
        ("grid-garbage", lambda ws: ["attribution", "corpus", "--data", "digits", "--victims", str(ws / "zoo"),
                                     "--grid", str(ws / "bad" / "garbage.json"), "--out", str(ws / "new-corpus")]),
        ("grid-list", lambda ws: ["attribution", "corpus", "--data", "digits", "--victims", str(ws / "zoo"),
                                  "--grid", str(ws / "bad" / "list.json"), "--out", str(ws / "new-corpus")]),
        ("grid-unknown-param", lambda ws: ["attribution", "corpus", "--data", "digits", "--limit", "8", "--victims",
                                           str(ws / "zoo"), "--grid", str(ws / "bad" / "grid_param.json"), "--out",
                                           str(ws / "new-corpus")]),
        ("grid-unknown-attack", lambda ws: ["attribution", "corpus", "--data", "digits", "--limit", "8", "--victims",
                                            str(ws / "zoo"), "--grid", str(ws / "bad" / "grid_attack.json"), "--out",
                                            str(ws / "new-corpus")]),
        ("grid-nan-confidence", lambda ws: ["attribution", "corpus", "--data", "digits", "--limit", "8", "--victims",
                                            str(ws / "zoo"), "--grid", str(ws / "bad" / "grid_nan.json"), "--out",
                                            str(ws / "new-corpus")]),
        ("grid-bad-values", lambda ws: ["attribution", "corpus", "--data", "digits", "--limit", "8", "--victims",
                                        str(ws / "zoo"), "--grid", str(ws / "bad" / "grid_values.json"), "--out",
                                        str(ws / "new-corpus")]),
        ("experiment-unknown-param", lambda ws: ["trace", "experiment", "--classifier", str(ws / "zoo" / "lenet"),
                                                 "--data", "digits", "--param", "hopskipjump.foo=1", "--out",
                                                 str(ws / "new-exp")]),
        ("experiment-param-for-no-attack", lambda ws: ["trace", "experiment", "--classifier", str(ws / "zoo" / "lenet"),
                                                       "--data", "digits", "--param", "nope.max_iter=5", "--out",
                                                       str(ws / "new-exp")]),
        ("labels-duplicate-rows", lambda ws: ["attribution", "predict", "--model", str(ws / "mtaa.safetensors"),
                                              str(ws / "advs.npz"), "--labels", str(ws / "bad" / "labels.csv")]),
        ("labels-not-a-table", lambda ws: ["attribution", "predict", "--model", str(ws / "mtaa.safetensors"),
                                           str(ws / "advs.npz"), "--labels", str(ws / "bad" / "garbage.json")]),
        ("tracer-garbage", lambda ws: ["trace", "separate", "--classifier", str(ws / "zoo" / "lenet"), "--tracer",
                                       str(ws / "bad" / "garbage.safetensors"), "--no-onnx", "--out",
                                       str(ws / "new-copies")]),
        ("imagefolder-bad-zip", lambda ws: ["data", "info", "imagefolder", "--data-dir",
                                            str(ws / "bad" / "truncated.npz")]),
        ("imagefolder-empty", lambda ws: ["data", "info", "imagefolder", "--data-dir", str(ws / "bad" / "empty_folder")]),
        ("keygen-out-exists", lambda ws: ["trace", "keygen", "--out", str(ws / "grid.json")]),
        ("keygen-out-is-a-folder", lambda ws: ["trace", "keygen", "--out", str(ws / "bad" / "empty_folder")]),
        ("sign-key-garbage", lambda ws: ["trace", "sign", "--record", str(ws / "copies"), "--signing-key",
                                         str(ws / "bad" / "garbage.json")]),
        ("sign-key-missing", lambda ws: ["trace", "sign", "--record", str(ws / "copies"), "--signing-key",
                                         str(ws / "bad" / "missing")]),
        ("sign-edited-record", lambda ws: ["trace", "sign", "--record", str(_copy_of(ws, "copies", _edit_record_json)),
                                           "--signing-key", str(ws / "bad" / "garbage.json")]),
        ("identify-seller-key-garbage", lambda ws: ["trace", "identify", "--record", str(ws / "copies"), "--examples",
                                                    str(ws / "advs.npz"), "--seller-key", str(ws / "bad" / "garbage.json")]),
        ("investigate-nothing-to-do", lambda ws: ["investigate", str(ws / "advs.npz"), "--out", str(ws / "new-report")]),
        ("investigate-seller-key-garbage", lambda ws: ["investigate", str(ws / "advs.npz"), "--record",
                                                       str(ws / "copies"), "--seller-key",
                                                       str(ws / "bad" / "garbage.json"), "--out", str(ws / "new-report")]),
        ("investigate-out-is-the-record", lambda ws: ["investigate", str(ws / "advs.npz"), "--record",
                                                      str(ws / "copies"), "--out", str(ws / "copies"), "--overwrite"]),
        ("investigate-edited-record", lambda ws: ["investigate", str(ws / "advs.npz"), "--record",
                                                  str(_copy_of(ws, "copies", _edit_record_json)), "--out",
                                                  str(ws / "new-report")]),
        ("train-data-dir-is-file", lambda ws: ["models", "train", "--model", "lenet", "--data", "mnist", "--data-dir",
                                               str(ws / "bad" / "notdir"), "--out", str(ws / "new.safetensors")]),
        ("mnist-dir-is-file", lambda ws: ["data", "info", "mnist", "--data-dir", str(ws / "bad" / "notdir")]),
        ("unknown-param-key", lambda ws: ["attacks", "run", "--attack", "fgsm", "--weights", str(ws / "zoo" / "lenet"),
                                          "--data", "digits", "--param", "epsilon=0.1"]),
        ("param-nan", lambda ws: ["attacks", "run", "--attack", "cw-l2", "--weights", str(ws / "zoo" / "lenet"),
                                  "--data", "digits", "--param", "kappa=NaN"]),
        ("lr-nan", lambda ws: ["attribution", "train", "--corpus", str(ws / "corpus"), "--lr", "nan", "--out",
                               str(ws / "new.safetensors")]),
        ("experiment-white-box-attack", lambda ws: ["trace", "experiment", "--classifier", str(ws / "zoo" / "lenet"),
                                                    "--attacks", "fgsm", "--out", str(ws / "new-exp")]),
        # outputs: an input, a file inside an input folder, an existing file, an existing foreign folder
        ("json-is-the-evidence", lambda ws: ["trace", "identify", "--record", str(ws / "copies"), "--examples",
                                             str(ws / "advs.npz"), "--json", str(ws / "advs.npz")]),
        ("json-inside-the-record", lambda ws: ["trace", "identify", "--record", str(ws / "copies"), "--examples",
                                               str(ws / "advs.npz"), "--json", str(ws / "copies" / "record.json"),
                                               "--overwrite"]),
        ("json-exists", lambda ws: ["data", "info", "digits", "--json", str(ws / "grid.json")]),
        ("attack-out-is-the-weights", lambda ws: ["attacks", "run", "--attack", "fgsm", "--weights",
                                                  str(ws / "zoo" / "lenet.safetensors"), "--data", "digits",
                                                  "--out", str(ws / "zoo" / "lenet.safetensors"), "--overwrite"]),
        ("train-out-exists", lambda ws: ["attribution", "train", "--corpus", str(ws / "corpus"), "--out",
                                         str(ws / "advs.npz")]),
        ("report-into-foreign-folder", lambda ws: ["attribution", "evaluate", "--corpus", str(ws / "corpus"), "--model",
                                                   str(ws / "mtaa.safetensors"), "--out", str(ws / "bad")]),
        ("report-into-the-corpus", lambda ws: ["attribution", "evaluate", "--corpus", str(ws / "corpus"), "--model",
                                               str(ws / "mtaa.safetensors"), "--out", str(ws / "corpus" / "report"),
                                               "--overwrite"]),
        ("demo-into-foreign-folder", lambda ws: ["demo", "--out", str(ws / "bad")]),
        ("separate-into-record", lambda ws: ["trace", "separate", "--classifier", str(ws / "zoo" / "lenet"),
                                             "--no-onnx", "--out", str(ws / "copies"), "--overwrite"]),
        ("corpus-into-victims", lambda ws: ["attribution", "corpus", "--data", "digits", "--victims", str(ws / "zoo"),
                                            "--out", str(ws / "zoo" / "corpus")]),
    ]
    cases += _serving_cases()
    return cases


def _serving_cases() -> list[tuple[str, Callable[[Path], list[str]]]]:
    """serve, buyers and queries: a bad keys file, record, log or detector; none is made or changed."""
    def serve(ws: Path, record: Path, keys: str) -> list[str]:
        return ["serve", "--record", str(record), "--keys", str(ws / "bad" / keys), "--log",
                str(ws / "new-log.sqlite"), "--port", "0"]

    def detect(ws: Path, log: Path, detector: str) -> list[str]:
        return ["queries", "detect", "--log", str(log), "--detector", str(ws / "bad" / detector)]

    cases: list[tuple[str, Callable[[Path], list[str]]]] = [
        (f"serve-keys-{kind}", lambda ws, k=kind: serve(ws, ws / "served", k))
        for kind in ("missing.json", "garbage.json", "list.json", "detector.json")]
    cases += [
        ("serve-edited-record", lambda ws: serve(ws, _copy_of(ws, "served", _edit_record_json), "keys.json")),
        ("serve-keys-of-another-record", lambda ws: serve(ws, ws / "copies", "keys.json")),
        ("serve-bad-rate-limit", lambda ws: [*serve(ws, ws / "served", "keys.json"), "--rate-limit", "lots"]),
        ("serve-log-not-a-log", lambda ws: [*serve(ws, ws / "served", "keys.json")[:-4], "--log",
                                            str(ws / "bad" / "garbage.json")]),
        ("serve-log-is-an-npz", lambda ws: [*serve(ws, ws / "served", "keys.json")[:-4], "--log",
                                            str(ws / "advs.npz")]),
        ("buyers-add-keys-garbage", lambda ws: ["buyers", "add", "--record", str(ws / "served"), "--keys",
                                                str(ws / "bad" / "garbage.json"), "--buyer", "bob", "--copy", "0"]),
        ("buyers-add-edited-record", lambda ws: ["buyers", "add", "--record",
                                                 str(_copy_of(ws, "served", _edit_record_json)), "--keys",
                                                 str(ws / "new-keys.json"), "--buyer", "bob", "--copy", "0"]),
        ("buyers-add-copies-without-onnx", lambda ws: ["buyers", "add", "--record", str(ws / "copies"), "--keys",
                                                       str(ws / "new-keys.json"), "--buyer", "bob", "--copy", "0"]),
        ("buyers-add-no-such-copy", lambda ws: ["buyers", "add", "--record", str(ws / "served"), "--keys",
                                                str(ws / "new-keys.json"), "--buyer", "bob", "--copy", "9"]),
        ("buyers-add-twice", lambda ws: ["buyers", "add", "--record", str(ws / "served"), "--keys",
                                         str(ws / "bad" / "keys.json"), "--buyer", "alice", "--copy", "0"]),
        ("buyers-revoke-keys-list", lambda ws: ["buyers", "revoke", "--keys", str(ws / "bad" / "list.json"),
                                                "--buyer", "alice"]),
        ("buyers-revoke-unknown-buyer", lambda ws: ["buyers", "revoke", "--keys", str(ws / "bad" / "keys.json"),
                                                    "--buyer", "mallory"]),
        ("buyers-list-keys-missing", lambda ws: ["buyers", "list", "--keys", str(ws / "new-keys.json")]),
        ("buyers-list-keys-garbage", lambda ws: ["buyers", "list", "--keys", str(ws / "bad" / "garbage.json")]),
        ("detect-log-missing", lambda ws: detect(ws, ws / "new-log.sqlite", "detector.json")),
        ("detect-log-not-a-log", lambda ws: detect(ws, ws / "bad" / "garbage.json", "detector.json")),
        ("detect-log-is-an-npz", lambda ws: detect(ws, ws / "advs.npz", "detector.json")),
        ("detect-detector-garbage", lambda ws: detect(ws, ws / "bad" / "garbage.json", "garbage.json")),
        ("detect-detector-is-keys", lambda ws: detect(ws, ws / "bad" / "garbage.json", "keys.json")),
        ("investigate-log-without-detector", lambda ws: ["investigate", str(ws / "advs.npz"), "--query-log",
                                                         str(ws / "bad" / "garbage.json"), "--out",
                                                         str(ws / "new-report")]),
        ("investigate-log-not-a-log", lambda ws: ["investigate", str(ws / "advs.npz"), "--query-log",
                                                  str(ws / "bad" / "garbage.json"), "--detector",
                                                  str(ws / "bad" / "detector.json"), "--out", str(ws / "new-report")]),
        ("investigate-families-not-families", lambda ws: ["investigate", str(ws / "advs.npz"), "--query-log",
                                                          str(ws / "bad" / "garbage.json"), "--detector",
                                                          str(ws / "bad" / "detector.json"), "--families",
                                                          str(ws / "bad" / "keys.json"), "--out",
                                                          str(ws / "new-report")]),
        ("families-edited-record", lambda ws: ["queries", "families", "--record",
                                               str(_copy_of(ws, "served", _edit_record_json)), "--data", "digits",
                                               "--out", str(ws / "new-detector.json")]),
        ("families-no-such-copy", lambda ws: ["queries", "families", "--record", str(ws / "served"), "--copy", "7",
                                              "--data", "digits", "--out", str(ws / "new-detector.json")]),
        ("calibrate-false-flag-rate", lambda ws: ["queries", "calibrate", "--data", "digits", "--false-flag-rate", "1",
                                                 "--out", str(ws / "new-detector.json")]),
    ]
    return cases


CASES = _cases()


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "edited" not in p.relative_to(root).parts}


@pytest.mark.parametrize("name,make_args", CASES, ids=[name for name, _ in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(ws: Path, name: str, make_args) -> None:
    args = make_args(ws)
    before = _tree_digest(ws)
    result = _invoke(args)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert result.exit_code == 2, f"{name}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("Error: "), f"{name}: {result.stderr}"
    assert "Traceback" not in result.output and "internal error" not in lines[0], result.output
    assert _tree_digest(ws) == before, f"{name} changed files in the workspace"
    for new in ("new-copies", "new-exp", "new-report", "new-corpus", "new.safetensors", "new-log.sqlite",
                "new-keys.json", "new-detector.json"):
        assert not (ws / new).exists(), f"{name} left {new} behind"


def test_a_white_box_attack_on_a_hard_label_copy_is_flagged(ws: Path, tmp_path: Path, caplog) -> None:
    result = _invoke(["attacks", "run", "--attack", "fgsm", "--copies", str(ws / "copies"), "--copy", "1", "--data",
                      "digits", "--n", "2", "--param", "eps=0.2", "--out", str(tmp_path / "advs.npz")])
    assert result.exit_code == 0, result.output
    assert any("white-box attack" in r.getMessage() for r in caplog.records)


def test_rerunning_into_an_own_report_and_refusing_an_edited_one(ws: Path, tmp_path: Path) -> None:
    args = ["attribution", "evaluate", "--corpus", str(ws / "corpus"), "--model", str(ws / "mtaa.safetensors"),
            "--out", str(tmp_path / "report")]
    _ok(args)
    _ok(args)  # its own files, unchanged: written again
    report = tmp_path / "report" / "report.md"
    report.write_text(report.read_text() + "\nmy conclusions\n")
    edited = report.read_bytes()
    result = _invoke(args)
    assert result.exit_code == 2 and "changed since advforensics wrote it" in result.stderr
    assert report.read_bytes() == edited
    _ok([*args, "--overwrite"])
    assert b"my conclusions" not in report.read_bytes()


def test_every_reading_command_is_in_the_table(ws: Path) -> None:
    """Every command that takes a user file appears in the table (a new command must add its cases)."""
    import click

    covered = {tuple(make(ws)[:2]) for _, make in CASES}
    reading = set()
    for group_name, group in cli.commands.items():
        commands = getattr(group, "commands", {None: group})
        for command_name, command in commands.items():
            takes_file = any(isinstance(p.type, click.Path) and not isinstance(p.type, (OutputFile, OutputDir))
                             for p in command.params)
            if takes_file:
                reading.add((group_name, command_name) if command_name else (group_name,))
    missing = {r for r in reading if not any(c[: len(r)] == r for c in covered)}
    assert not missing, f"commands reading files without bad-input cases: {sorted(missing)}"


def test_entry_point_prints_one_line_for_a_bad_file(tmp_path: Path) -> None:
    """The installed `advforensics` program (not the test runner) ends bad input in one line, exit 2."""
    bad = tmp_path / "advs.npz"
    bad.write_text("not an npz")
    before = bad.read_bytes()
    done = subprocess.run([sys.executable, "-m", "advforensics.cli.main", "attribution", "predict", "--model",
                           str(tmp_path / "none.safetensors"), str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("Error: "), done.stderr
    assert bad.read_bytes() == before
