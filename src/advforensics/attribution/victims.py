"""Victim models for attribution: loading them, and matching them to the corpus made on them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advforensics.errors import CheckpointError, InputValidationError

log = logging.getLogger(__name__)


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


def cw_victim_params(grid: Any, victims: Mapping[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                     kappa_scale: str, headroom: float = 1.5, stored: Path | None = None,
                     device: str | torch.device = "cpu") -> dict[str, dict[str, dict[str, float]]]:
    """Per-victim C&W `kappa_scale` for a corpus (victim -> {"cw-l2": {"kappa_scale": s}}).

    kappa_scale "auto": maps headroom x the grid's largest kappa to each victim's 10th-percentile
    reachable margin on the first 32 images it classifies correctly, so that the largest kappa stays
    reachable by a short schedule; a number: that scale for every victim (1: kappa in logits, no entry).
    stored: a corpus manifest being resumed, whose scales are reused (re-measuring could differ in the last
    bit and change the corpus)."""
    import json

    if stored is not None and stored.is_file():
        try:
            reused = json.loads(stored.read_text())["config"]["victim_params"]
        except (json.JSONDecodeError, KeyError, TypeError):
            reused = {}
        if reused:
            return reused
    if not any(a.name == "cw-l2" for a in grid.attacks):
        return {}
    if kappa_scale != "auto":
        try:
            scale = float(kappa_scale)
        except ValueError:
            raise InputValidationError(f"--cw-kappa-scale must be 'auto' or a number, got {kappa_scale!r}") from None
        return {} if scale == 1.0 else {name: {"cw-l2": {"kappa_scale": scale}} for name in victims}
    from advforensics.attacks.cw import kappa_scale_for

    if headroom < 1:
        raise InputValidationError(f"--cw-headroom must be >= 1, got {headroom}")
    x, y = images[:32].to(device), labels[:32].to(device)
    params = {}
    for name, model in victims.items():
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        scale = kappa_scale_for(model, x[ok], y[ok], nominal_max=headroom * max(grid.attack("cw-l2").values))
        params[name] = {"cw-l2": {"kappa_scale": scale}}
        log.info("victim %s: C&W kappa_scale %.4f", name, scale)
    return params
