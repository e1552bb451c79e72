"""Victim models for attribution: loading them, and matching them to the corpus made on them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from advforensics.errors import CheckpointError, InputValidationError


def load_victims(spec: str | Path) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]]]:
    """Victim models from a directory of zoo weights or a comma-separated list of weights files.

    Returns (models by name, info by name: file, weights_sha256, architecture); the name is the
    architecture's, or the file's stem for every file whose architecture another file shares (two
    seeds of one architecture; the corpus's victim label is the architecture either way).
    """
    from advforensics.models import load_model

    path = Path(spec)
    if path.is_dir():
        files = sorted(f for f in path.glob("*.safetensors") if ".train-state" not in f.name)
        if not files:
            raise InputValidationError(f"no *.safetensors victim weights in {path}")
    else:
        files = [Path(p.strip()) for p in str(spec).split(",") if p.strip()]
        if not files:
            raise InputValidationError("no victim weights given")
    loaded = [(file, *load_model(file)) for file in files]
    archs = [str(card["architecture"]["name"]) for _, _, card in loaded]
    victims: dict[str, nn.Module] = {}
    info: dict[str, dict[str, Any]] = {}
    for (file, model, card), arch in zip(loaded, archs):
        name = arch if archs.count(arch) == 1 else file.with_suffix("").name  # seeds of one architecture
        if name in victims:
            raise InputValidationError(f"two victims named {name!r}")
        victims[name], info[name] = model, {"file": str(file), "weights_sha256": card.get("weights_sha256"),
                                            "architecture": card["architecture"]}
    return victims, info


def probe_settings(manifest: Mapping[str, Any], victims: Mapping[str, nn.Module],
                   info: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """MTAAConfig fields for a victim probe of the corpus's victims, in the corpus's order.

    Models beyond the corpus's victims (a zoo directory, a scalability subset) are left out. A
    missing victim, or one whose weights differ from those the corpus recorded (sha256), is an error:
    a probe of other models would read margins the corpus never saw.
    """
    expected = list(manifest["victims"])
    recorded = manifest.get("victim_info", {})
    missing = [name for name in expected if name not in victims]
    if missing:
        raise InputValidationError(f"the probe needs the corpus's victims {expected}; {missing} not among "
                                   f"{sorted(victims)}")
    for name in expected:
        want = recorded.get(name, {}).get("weights_sha256")
        have = info[name].get("weights_sha256")
        if want is None:
            raise CheckpointError(f"the corpus records no weights hash for victim {name!r}; cannot check the probe")
        if have != want:
            raise CheckpointError(f"victim {name!r} ({info[name].get('file')}) is not the model the corpus was made "
                                  f"on (weights sha256 {str(have)[:12]}..., corpus {str(want)[:12]}...)")
    params = manifest.get("config", {}).get("victim_params", {})
    return {"probe_victims": expected,
            "probe_architectures": [dict(info[name]["architecture"]) for name in expected],
            "probe_kappa_scales": [float(params.get(name, {}).get("cw-l2", {}).get("kappa_scale", 1.0))
                                   for name in expected]}


__all__ = ["load_victims", "probe_settings"]
