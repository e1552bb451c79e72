"""Every artifact is verified on load: signed seller records, ONNX copies, attributor and zoo weights."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from advforensics.cli.main import cli
from advforensics.errors import CheckpointError, DataFileError, InputValidationError
from advforensics.tracing.api import identify
from advforensics.tracing.copies import CopyParams
from advforensics.tracing.permutations import make_permutations
from advforensics.tracing.record import load_copies, read_record, separate, sign_existing_record
from advforensics.tracing.serving import onnx_labels
from advforensics.tracing.signing import (fingerprint, generate_keypair, load_private_key, load_public_key,
                                          sign_record, verify_record)
from advforensics.tracing.tracer import create_tracer
from advforensics.models.checkpoint import CARD_FORMAT as MODEL_FORMAT
from advforensics.weights import load_weights, save_weights

RECORD_LOG = "advforensics.tracing.record"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """The seller's key pair and someone else's."""
    folder = tmp_path_factory.mktemp("keys")
    seller, seller_pub, _ = generate_keypair(folder / "seller")
    other, other_pub, _ = generate_keypair(folder / "other")
    return {"seller": seller, "seller.pub": seller_pub, "other": other, "other.pub": other_pub}


@pytest.fixture(scope="module")
def base_record(tmp_path_factory, zoo_classifier) -> Path:
    """An unsigned three-copy record with ONNX copies (no calibration: quick to make). Tests copy it."""
    out = tmp_path_factory.mktemp("base") / "copies"
    tracer = create_tracer("random", image_size=8, length_scale=1.0, seed=0)
    separate(zoo_classifier, tracer, make_permutations(10, 3), CopyParams(alpha=0.15, tau=2.0), out)
    return out


@pytest.fixture(scope="module")
def copy1_examples(base_record: Path, digits_data) -> torch.Tensor:
    """Minimal boundary points crafted on copy 1 (what an attacker holding copy 1 submits)."""
    from advforensics.tracing.calibration import deepfool_points

    _, copies = load_copies(base_record, warn=False)
    points, valid = deepfool_points(copies.copy(1), digits_data[0][200:224])
    return points[valid]


def _copy(record: Path, where: Path) -> Path:
    shutil.copytree(record, where)
    return where


def _forge_swap(directory: Path, a: int, b: int) -> None:
    """Swap two copies' permutations and recompute every plain hash, as a forger without the key would."""
    path = directory / "record.json"
    payload = json.loads(path.read_text())
    copies = payload["copies"]
    copies[a]["permutation"], copies[b]["permutation"] = copies[b]["permutation"], copies[a]["permutation"]
    for entry in copies:
        body = json.dumps({"base": payload["base_hash"], "tracer": payload["tracer_hash"], "perm": entry["permutation"],
                           "alpha": payload["alpha"], "tau": payload["tau"]}, sort_keys=True)
        entry["copy_hash"] = hashlib.sha256(body.encode()).hexdigest()
    body = {k: v for k, v in payload.items() if k != "record_hash"}
    payload["record_hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def test_forged_record_is_refused_with_the_seller_key(base_record, copy1_examples, keys, tmp_path, caplog) -> None:
    signed = _copy(base_record, tmp_path / "signed")
    sign_record(signed, keys["seller"])
    assert verify_record(signed, keys["seller.pub"]) == verify_record(signed, load_public_key(keys["seller.pub"]))
    report = identify(signed, copy1_examples, public_key=keys["seller.pub"])
    assert report.aggregate_source == 1

    forged = _copy(signed, tmp_path / "forged")
    _forge_swap(forged, 1, 2)
    # the plain hashes pass: without the key the forged record loads (with a warning) and accuses copy 2
    with caplog.at_level(logging.WARNING, logger=RECORD_LOG):
        assert read_record(forged).copies[2].permutation == read_record(signed, warn=False).copies[1].permutation
        assert identify(forged, copy1_examples).aggregate_source == 2
    assert "signature was not checked" in caplog.text and "--seller-key" in caplog.text
    # the seller's key refuses it, before anything is loaded
    for load in (lambda: read_record(forged, public_key=keys["seller.pub"]),
                 lambda: load_copies(forged, public_key=keys["seller.pub"]),
                 lambda: identify(forged, copy1_examples, public_key=keys["seller.pub"])):
        with pytest.raises(CheckpointError, match="modified after it was signed"):
            load()


def test_another_key_or_no_signature_is_refused(base_record, keys, tmp_path, caplog) -> None:
    by_other = _copy(base_record, tmp_path / "other")
    sign_record(by_other, keys["other"])
    verify_record(by_other, keys["other.pub"])
    with pytest.raises(CheckpointError, match="another key"):
        read_record(by_other, public_key=keys["seller.pub"])
    # a signature by another key that claims the seller's fingerprint still fails the signature check
    sig = json.loads((by_other / "record.sig").read_text())
    sig["public_key_sha256"] = fingerprint(load_public_key(keys["seller.pub"]))
    (by_other / "record.sig").write_text(json.dumps(sig))
    with pytest.raises(CheckpointError, match="fails its signature"):
        read_record(by_other, public_key=keys["seller.pub"])
    (by_other / "record.sig").write_text("not a signature")
    with pytest.raises(CheckpointError, match="not an advforensics record signature"):
        read_record(by_other, public_key=keys["seller.pub"])

    unsigned = _copy(base_record, tmp_path / "unsigned")
    with caplog.at_level(logging.WARNING, logger=RECORD_LOG):
        load_copies(unsigned)  # legacy records keep loading
    assert "is unsigned" in caplog.text and "advforensics trace sign" in caplog.text
    with pytest.raises(CheckpointError, match="unsigned"):
        load_copies(unsigned, public_key=keys["seller.pub"])


def test_signed_record_covers_the_classifier_architecture(base_record, keys, tmp_path) -> None:
    """base_hash covers C's tensors only; an edited card (same weights, another revision) is refused."""
    signed = _signed(base_record, tmp_path / "signed", keys)
    load_copies(signed, public_key=keys["seller.pub"])
    weights = signed / "classifier.safetensors"
    tensors, card = load_weights(weights, MODEL_FORMAT, "model")
    card["architecture"]["revision"] = 1 if card["architecture"]["revision"] != 1 else 2
    save_weights(weights, tensors, card, card_copy=True)  # the weights, and so base_hash, are unchanged
    with pytest.raises(CheckpointError, match="another architecture"):
        load_copies(signed, public_key=keys["seller.pub"])


def _signed(record: Path, where: Path, keys: dict[str, Path]) -> Path:
    sign_record(_copy(record, where), keys["seller"])
    return where


def test_key_files(keys, tmp_path) -> None:
    assert stat.S_IMODE(keys["seller"].stat().st_mode) == 0o600
    assert keys["seller.pub"] == keys["seller"].with_name("seller.pub")
    with pytest.raises(InputValidationError, match="already exists"):
        generate_keypair(keys["seller"])
    (tmp_path / "k.pub").write_text("x")  # an orphan .pub is not overwritten either
    with pytest.raises(InputValidationError, match="already exists"):
        generate_keypair(tmp_path / "k")
    assert not (tmp_path / "k").exists()
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello")
    with pytest.raises(InputValidationError, match="not a PEM private key"):
        load_private_key(not_a_key)
    with pytest.raises(InputValidationError, match="not a PEM public key"):
        load_public_key(not_a_key)
    with pytest.raises(InputValidationError, match="is a public key"):
        load_private_key(keys["seller.pub"])
    with pytest.raises(InputValidationError, match="is a private key"):
        load_public_key(keys["seller"])
    with pytest.raises(InputValidationError, match="not found"):
        load_public_key(tmp_path / "missing.pub")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec").write_bytes(ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    with pytest.raises(InputValidationError, match="not an Ed25519"):
        load_private_key(tmp_path / "ec")


def test_modified_or_replaced_onnx_copy_is_refused(base_record, copy1_examples, keys, tmp_path, caplog) -> None:
    flipped = _copy(base_record, tmp_path / "flipped")
    blob = bytearray((flipped / "copy_2.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (flipped / "copy_2.onnx").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"copy_2\.onnx does not match the record \(modified or replaced\)"):
        identify(flipped, copy1_examples)
    record = read_record(flipped, warn=False)
    with pytest.raises(CheckpointError, match="does not match the record"):
        onnx_labels(flipped / "copy_2.onnx", copy1_examples, expected_sha256=record.copies[2].onnx_sha256)
    with pytest.raises(CheckpointError, match="does not match the record"):  # never signed as good
        sign_existing_record(flipped, keys["seller"])
    assert not (flipped / "record.sig").exists()

    replaced = _signed(base_record, tmp_path / "replaced", keys)  # a valid signature does not cover a swapped file
    shutil.copyfile(replaced / "copy_0.onnx", replaced / "copy_1.onnx")
    with pytest.raises(CheckpointError, match=r"copy_1\.onnx does not match"):
        identify(replaced, copy1_examples, public_key=keys["seller.pub"])

    absent = _signed(base_record, tmp_path / "absent", keys)
    (absent / "copy_0.onnx").unlink()
    with caplog.at_level(logging.WARNING, logger=RECORD_LOG):
        assert identify(absent, copy1_examples, public_key=keys["seller.pub"]).aggregate_source == 1
    assert "copy_0.onnx is named by the record but absent" in caplog.text


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_cli_keygen_sign_and_identify_with_the_seller_key(base_record, copy1_examples, zoo_classifier,
                                                          tmp_path) -> None:
    import numpy as np

    from advforensics.models import save_model

    runner = CliRunner()
    key = tmp_path / "keys" / "seller"
    result = runner.invoke(cli, ["trace", "keygen", "--out", str(key)])
    assert result.exit_code == 0, result.output
    assert key.is_file() and (tmp_path / "keys" / "seller.pub").is_file()
    result = runner.invoke(cli, ["trace", "keygen", "--out", str(key)])
    assert result.exit_code == 2 and "already exists" in _error_line(result)

    record = _copy(base_record, tmp_path / "legacy")
    result = runner.invoke(cli, ["trace", "sign", "--record", str(record), "--signing-key", str(key)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["trace", "sign", "--record", str(record), "--signing-key", str(key)])
    assert result.exit_code == 2 and "--overwrite" in _error_line(result)
    result = runner.invoke(cli, ["trace", "sign", "--record", str(record), "--signing-key", str(key), "--overwrite"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["trace", "sign", "--record", str(record), "--signing-key", str(key) + ".pub",
                                 "--overwrite"])
    assert result.exit_code == 2 and "is a public key" in _error_line(result)

    np.savez(tmp_path / "advs.npz", x_adv=copy1_examples.numpy())
    identify_args = ["trace", "identify", "--record", str(record), "--examples", str(tmp_path / "advs.npz"),
                     "--seller-key", str(key) + ".pub"]
    result = runner.invoke(cli, [*identify_args, "--json", str(tmp_path / "id.json")])
    assert result.exit_code == 0, result.output
    assert "record signature verified" in result.output
    payload = json.loads((tmp_path / "id.json").read_text())
    assert payload["aggregate"]["source"] == 1 and payload["record_signature"]["verified"]

    _forge_swap(record, 1, 2)
    result = runner.invoke(cli, identify_args)
    assert result.exit_code == 2 and "modified after it was signed" in _error_line(result)
    (record / "record.sig").unlink()
    result = runner.invoke(cli, identify_args)
    assert result.exit_code == 2 and "unsigned" in _error_line(result)

    # separate --signing-key signs the new record (no ONNX export: quick)
    save_model(zoo_classifier, tmp_path / "c", card={"data": "digits"})
    out = tmp_path / "new"
    result = runner.invoke(cli, ["trace", "separate", "--classifier", str(tmp_path / "c"), "--copies", "2",
                                 "--no-onnx", "--signing-key", str(key), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "signed by key" in result.output
    verify_record(out, str(key) + ".pub")
    result = runner.invoke(cli, ["trace", "separate", "--classifier", str(tmp_path / "c"), "--copies", "2",
                                 "--no-onnx", "--signing-key", str(tmp_path / "advs.npz"),
                                 "--out", str(tmp_path / "n2")])
    assert result.exit_code == 2 and "not a PEM private key" in _error_line(result)
    assert not (tmp_path / "n2" / "record.json").exists()  # refused before any work


def _flip_byte(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))


def test_bit_flipped_zoo_weights_are_refused(zoo_classifier, tmp_path) -> None:
    from advforensics.models import load_model, save_model

    weights = save_model(zoo_classifier, tmp_path / "c")
    load_model(tmp_path / "c")
    _flip_byte(weights, weights.stat().st_size - 3)  # inside the last tensor's data
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_model(tmp_path / "c")


def test_tampered_attributor_weights_are_refused(tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from advforensics.attribution.mtaa import MTAA, MTAAConfig
    from advforensics.attribution.card import load_attributor, save_attributor

    config = MTAAConfig(n_attacks=2, n_victims=2, image_size=8, width=4, pe_width=4, pe_channels=(8, 8))
    path = tmp_path / "attributor.safetensors"
    save_attributor(MTAA(config).eval(), _card(config), path)
    load_attributor(path)
    good = path.read_bytes()

    _flip_byte(path, len(good) - 3)
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_attributor(path)

    # same shapes, random values, re-saved by safetensors with the card (and its hash) untouched
    path.write_bytes(good)
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        random = {name: torch.rand_like(handle.get_tensor(name).float()).to(handle.get_tensor(name).dtype)
                  for name in handle.keys()}
    save_file(random, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_attributor(path)


def _card(config):
    from advforensics.attribution.card import AttributorCard, CardSplit

    return AttributorCard(kind="mtaa", config=config.to_dict(), attack_names=["fgsm", "pgd-linf"],
                          victim_names=["lenet", "vgg16"], image_shape=(1, 8, 8), split=CardSplit(0.2, 0.1, 0))


def _tamper_everywhere(path: Path, load, trials: int = 40) -> int:
    """Overwrite one random byte of `path` `trials` times (a fresh copy each time): every load must refuse."""
    import random

    good = path.read_bytes()
    rng = random.Random(0)
    for _ in range(trials):
        data = bytearray(good)
        where = rng.randrange(len(data))
        data[where] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        with pytest.raises((CheckpointError, InputValidationError, DataFileError)):
            load()
    path.write_bytes(good)
    load()  # the untouched file still loads
    return trials


def test_random_tampering_of_every_artifact_is_refused_every_time(base_record, keys, zoo_classifier, tmp_path,
                                                                  caplog) -> None:
    """One random byte changed anywhere in a signed record, an ONNX copy, a zoo model or an attributor file:
    refused on every one of 40 tries each, in headers as much as in data."""
    from advforensics.attribution.mtaa import MTAA, MTAAConfig
    from advforensics.attribution.card import load_attributor, save_attributor
    from advforensics.models import load_model, save_model

    record = _copy(base_record, tmp_path / "signed")
    sign_record(record, load_private_key(keys["seller"]))
    with caplog.at_level(logging.ERROR):
        _tamper_everywhere(record / "record.json", lambda: load_copies(record, public_key=keys["seller.pub"]))
        _tamper_everywhere(record / "copy_1.onnx", lambda: load_copies(record, public_key=keys["seller.pub"]))
        _tamper_everywhere(record / "tracer.safetensors", lambda: load_copies(record, public_key=keys["seller.pub"]))
    weights = save_model(zoo_classifier, tmp_path / "c")
    _tamper_everywhere(weights, lambda: load_model(tmp_path / "c"))
    config = MTAAConfig(n_attacks=2, n_victims=2, image_size=8, width=4, pe_width=4, pe_channels=(8, 8))
    attributor = tmp_path / "attributor.safetensors"
    save_attributor(MTAA(config).eval(), _card(config), attributor)
    _tamper_everywhere(attributor, lambda: load_attributor(attributor))
