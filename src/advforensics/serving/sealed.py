"""The seller's small JSON artifacts (detector, family model): a format name and a SHA-256 over the rest,
checked on load, so an edited or truncated file is refused rather than half-used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from advforensics.errors import CheckpointError
from advforensics.utils import write_json


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_sealed(path: str | Path, format_name: str, body: dict[str, Any]) -> None:
    body = {"format": format_name, **body}
    write_json(path, {**body, "sha256": _digest(body)})


def read_sealed(path: str | Path, format_name: str, what: str) -> dict[str, Any]:
    """The body of a sealed file of `format_name` (`what` names it in errors)."""
    try:
        payload = json.loads(Path(path).read_bytes())
        body = {k: v for k, v in payload.items() if k != "sha256"}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise CheckpointError(f"{path} is not a valid {what} ({error})") from None
    if body.get("format") != format_name:
        raise CheckpointError(f"{path} is not an advforensics {what}")
    if payload.get("sha256") != _digest(body):
        raise CheckpointError(f"{path} fails its hash: the {what} was edited or corrupted")
    return body


__all__ = ["read_sealed", "write_sealed"]
