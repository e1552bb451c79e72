"""Seller signatures over a record directory: Ed25519 keys and a detached `record.sig`.

The hashes inside record.json catch corruption, but a forger who edits the record can recompute
them. A signature by the seller's private key over the exact bytes of record.json cannot be
recomputed without that key, and since record.json carries the hashes of C (base_hash), the tracer
(tracer_hash) and every ONNX copy (onnx_sha256), verifying it covers all of them.

record.sig is JSON: {"format", "algorithm": "ed25519", "public_key_sha256", "signature" (base64)}.
The fingerprint (sha256 of the raw 32-byte public key) only lets an error say which key signed; it
is not trusted, the signature check is.

Keys are PEM files read with cryptography's loaders (never pickle): the private key as unencrypted
PKCS#8 (mode 0600), the public key as SubjectPublicKeyInfo beside it as <name>.pub.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from advforensics.errors import CheckpointError, InputValidationError
from advforensics.utils import atomic_write_bytes, sha256_bytes

SIGNATURE_FILE = "record.sig"
SIGNATURE_FORMAT = "advforensics-record-signature/1"
RECORD_FILE = "record.json"  # the same name as record.RECORD_FILE (record.py imports this module)


def public_path(private_path: str | Path) -> Path:
    """Where the public key of a private key file lives: <name>.pub beside it."""
    path = Path(private_path)
    return path.with_name(path.name + ".pub")


def fingerprint(key: Ed25519PublicKey) -> str:
    """sha256 (hex) of the raw public key: names a key in messages."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)


def generate_keypair(path: str | Path) -> tuple[Path, Path, str]:
    """Write a new Ed25519 private key to `path` (mode 0600) and its public key to `path`.pub.

    Returns (private path, public path, fingerprint). Refuses (InputValidationError) when either file
    exists: overwriting a seller key would orphan every record it signed."""
    private = Path(path)
    public = public_path(private)
    for existing in (private, public):
        if existing.exists():
            raise InputValidationError(f"{existing} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private.parent.mkdir(parents=True, exist_ok=True)
    _write_new(private, private_pem, 0o600)
    _write_new(public, public_pem, 0o644)
    return private, public, fingerprint(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never replace a file that appeared since the check; the mode applies from creation on,
    # so the private key is never readable by others, not even for a moment.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise InputValidationError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _read_key_file(path: str | Path, what: str) -> bytes:
    source = Path(path)
    if not source.is_file():
        raise InputValidationError(f"{what} file not found: {source}")
    return source.read_bytes()


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; anything else -> InputValidationError."""
    data = _read_key_file(path, "signing key")
    if b"PUBLIC KEY" in data:
        raise InputValidationError(f"{path} is a public key; signing needs the private key (the file without .pub)")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # an encrypted PEM
        raise InputValidationError(f"{path} is a passphrase-protected key; advforensics needs an unencrypted "
                                   "one (`advforensics trace keygen`)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputValidationError(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputValidationError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file; anything else -> InputValidationError."""
    data = _read_key_file(path, "seller public key")
    if b"PRIVATE KEY" in data:
        raise InputValidationError(f"{path} is a private key; verification needs the public key ({path}.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InputValidationError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputValidationError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def sign_record(directory: str | Path, key: Ed25519PrivateKey | str | Path, overwrite: bool = False) -> str:
    """Write `directory`/record.sig, a signature over the exact bytes of record.json; returns the
    signing key's fingerprint. Checks nothing else: callers verify the record first
    (record.sign_existing_record does)."""
    record_path = Path(directory) / RECORD_FILE
    sig_path = Path(directory) / SIGNATURE_FILE
    private = key if isinstance(key, Ed25519PrivateKey) else load_private_key(key)
    if not record_path.is_file():
        raise CheckpointError(f"no seller record at {record_path}")
    if sig_path.exists() and not overwrite:
        raise InputValidationError(f"{sig_path} already exists; pass --overwrite to replace the signature")
    signature = private.sign(record_path.read_bytes())
    digest = fingerprint(private.public_key())
    payload = {"format": SIGNATURE_FORMAT, "algorithm": "ed25519", "public_key_sha256": digest,
               "signature": base64.b64encode(signature).decode("ascii")}
    atomic_write_bytes(sig_path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    return digest


def signature_fingerprint(directory: str | Path) -> str | None:
    """The fingerprint a record.sig claims (unverified), or None without a readable record.sig."""
    try:
        return str(_read_signature(Path(directory) / SIGNATURE_FILE)["public_key_sha256"])
    except CheckpointError:
        return None


def _read_signature(sig_path: Path) -> dict[str, str]:
    try:
        payload = json.loads(sig_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{sig_path} not found") from None
    except (OSError, ValueError, UnicodeDecodeError):
        payload = None
    if not (isinstance(payload, dict) and payload.get("format") == SIGNATURE_FORMAT
            and payload.get("algorithm") == "ed25519" and isinstance(payload.get("signature"), str)
            and isinstance(payload.get("public_key_sha256"), str)):
        raise CheckpointError(f"{sig_path} is not an advforensics record signature")
    return payload


def verify_record_bytes(directory: str | Path, record_bytes: bytes, public_key: Ed25519PublicKey | str | Path) -> str:
    """Check `record_bytes` (record.json as read by the caller, so that what is verified is what is
    parsed) against `directory`/record.sig and the seller's public key; returns the fingerprint.

    A missing, malformed or wrong signature, or one by another key -> CheckpointError."""
    key = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(public_key)
    expected = fingerprint(key)
    sig_path = Path(directory) / SIGNATURE_FILE
    if not sig_path.exists():
        raise CheckpointError(f"{Path(directory)} is unsigned (no {SIGNATURE_FILE}) but a seller key was given: "
                              "refusing to trust it")
    payload = _read_signature(sig_path)
    if payload["public_key_sha256"] != expected:
        raise CheckpointError(f"{sig_path} was made by another key (fingerprint {payload['public_key_sha256'][:16]}), "
                              f"not by the given seller key ({expected[:16]})")
    try:
        key.verify(base64.b64decode(payload["signature"], validate=True), record_bytes)
    except (InvalidSignature, ValueError):
        raise CheckpointError(f"{Path(directory) / RECORD_FILE} fails its signature by key {expected[:16]}: "
                              "the record was modified after it was signed") from None
    return expected


def verify_record(directory: str | Path, public_key: Ed25519PublicKey | str | Path) -> str:
    """Verify `directory`/record.json against its record.sig and the seller's public key (see
    verify_record_bytes); returns the fingerprint. It checks the signature only: record.read_record
    with public_key= also checks the hashes."""
    record_path = Path(directory) / RECORD_FILE
    if not record_path.is_file():
        raise CheckpointError(f"no seller record at {record_path}")
    return verify_record_bytes(directory, record_path.read_bytes(), public_key)
