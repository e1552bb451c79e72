"""Buyers' API keys for the served copies: each key opens one copy of one seller record.

The keys file (JSON, written atomically, mode 0600) holds, per buyer, the SHA-256 of the key, never
the key itself: the key is printed once, when it is made. A key is 32 random bytes (secrets), so a
plain SHA-256 is enough; a slow password hash would only slow every request. Each entry also holds
the copy's `copy_hash` from the record, so a keys file is refused by a record it was not made for.
A revoked key stays in the file (who it was, and when it was revoked) and gets 401.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from advforensics.errors import CheckpointError, InputValidationError
from advforensics.tracing.record import SellerRecord
from advforensics.utils import atomic_write_bytes

KEYS_FORMAT = "advforensics-buyer-keys/1"
KEY_PREFIX = "afk_"  # recognisable in logs and secret scanners


@dataclass(frozen=True)
class Buyer:
    """One buyer: the copy their key opens and the hash of that key."""

    name: str
    copy_index: int
    copy_hash: str
    key_sha256: str
    created: float
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class BuyerKeys:
    """The keys file's content: buyers by name."""

    buyers: tuple[Buyer, ...] = ()

    def by_name(self, name: str) -> Buyer | None:
        return next((b for b in self.buyers if b.name == name), None)

    def authenticate(self, key: str) -> Buyer | None:
        """The active buyer this key belongs to, else None (unknown or revoked)."""
        digest = key_digest(key)
        buyer = next((b for b in self.buyers if secrets.compare_digest(b.key_sha256, digest)), None)
        return buyer if buyer is not None and buyer.active else None

    def add(self, name: str, copy_index: int, record: SellerRecord) -> tuple[BuyerKeys, str]:
        """A new buyer on copy `copy_index`; (the new keys, the key, to hand to the buyer once)."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise InputValidationError(f"buyer name {name!r}: use letters, digits, '-', '_' or '.'")
        if self.by_name(name) is not None:
            raise InputValidationError(f"buyer {name!r} already has a key; revoke it or choose another name")
        entry = _copy_entry(record, copy_index)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        buyer = Buyer(name=name, copy_index=copy_index, copy_hash=entry.copy_hash, key_sha256=key_digest(key),
                      created=time.time())
        return BuyerKeys(self.buyers + (buyer,)), key

    def revoke(self, name: str) -> BuyerKeys:
        buyer = self.by_name(name)
        if buyer is None:
            raise InputValidationError(f"no buyer {name!r} in the keys file")
        if not buyer.active:
            raise InputValidationError(f"buyer {name!r} was already revoked")
        return BuyerKeys(tuple(replace(b, revoked=time.time()) if b.name == name else b for b in self.buyers))

    def check_against(self, record: SellerRecord) -> None:
        """Every buyer's copy must be this record's copy (same index, same copy hash)."""
        for buyer in self.buyers:
            entry = _copy_entry(record, buyer.copy_index)
            if entry.copy_hash != buyer.copy_hash:
                raise CheckpointError(f"buyer {buyer.name!r}'s key was made for another record (copy "
                                      f"{buyer.copy_index} differs); make the keys with this record")


def _copy_entry(record: SellerRecord, copy_index: int):
    if not 0 <= copy_index < len(record.copies):
        raise InputValidationError(f"copy {copy_index}: the record has copies 0-{len(record.copies) - 1}")
    entry = record.copies[copy_index]
    if entry.onnx_file is None:
        raise InputValidationError(f"copy {copy_index} has no ONNX file to serve (the record was made with "
                                   "--no-onnx); run `trace separate` without it")
    return entry


def read_keys(path: str | Path) -> BuyerKeys:
    """The keys file at `path`; a missing file is an empty one (the first `buyers add` makes it)."""
    path = Path(path)
    if not path.exists():
        return BuyerKeys()
    try:
        payload = json.loads(path.read_bytes())
        if payload.get("format") != KEYS_FORMAT:
            raise CheckpointError(f"{path} is not an advforensics keys file")
        return BuyerKeys(tuple(Buyer(**entry) for entry in payload["buyers"]))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not a valid keys file ({error})") from None


def write_keys(path: str | Path, keys: BuyerKeys) -> None:
    payload = {"format": KEYS_FORMAT, "buyers": [asdict(b) for b in keys.buyers]}
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
    os.chmod(path, 0o600)


__all__ = ["Buyer", "BuyerKeys", "KEY_PREFIX", "key_digest", "read_keys", "write_keys"]
