"""advforensics: forensic investigation of adversarial attacks on image classifiers.

Two capabilities share one data, model and attack layer:
- proactive tracing (separate-and-trace): name the model copy an adversarial example came from;
- passive attribution (MTAA): recognise attack, victim and attack strength from the example alone.

    import advforensics as af
    evidence = af.evidence.load("advs.npz")
    report = af.tracing.identify("runs/copies", evidence)
    answers = af.attribution.Attributor.load("runs/mtaa.safetensors").predict(evidence)
    result = af.investigate("advs.npz", record="runs/copies", attributor="runs/mtaa.safetensors")

Submodules load on first use (the command line starts without importing torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("attacks", "attribution", "data", "evidence", "models", "tracing")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"advforensics.{name}")
    if name in ("investigate", "Investigation"):
        return getattr(importlib.import_module("advforensics.investigation"), name)
    raise AttributeError(f"module 'advforensics' has no attribute {name!r}")


__all__ = ["__version__", "investigate", "Investigation", *_SUBMODULES]
