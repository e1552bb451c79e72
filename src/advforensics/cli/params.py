"""How the CLI reads values written as text: `key=value` attack parameters and comma lists. One place, one
convention: a value that does not parse is a one-line UserError naming the option."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

from advforensics.cli.boundary import UserError

_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value): JSON values (0.1, 10, true, null), `8/255` fractions, else the string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--param expects key=value, got {text!r}")
    match = _FRACTION.match(raw)
    if match:
        denominator = float(match.group(2))
        if denominator == 0:
            raise UserError(f"--param {key}: division by zero in {raw!r}")
        return key, float(match.group(1)) / denominator
    if raw.strip() in ("True", "False"):
        return key, raw.strip() == "True"
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def attack_arguments(name: str) -> dict[str, Any]:
    """Constructor arguments of a registered attack with their defaults."""
    from advforensics.attacks import ATTACKS

    signature = inspect.signature(ATTACKS.get(name).__init__)
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in signature.parameters.values() if p.name != "self"}


def comma_list(text: str | None) -> list[str] | None:
    """"a, b,c" -> ["a", "b", "c"]; None stays None."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def numbers(text: str, kind: type = float) -> list[Any]:
    """Comma-separated numbers of `kind` (float or int)."""
    try:
        return [kind(v) for v in comma_list(text) or []]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise UserError(f"expected comma-separated {what}, got {text!r}") from None
