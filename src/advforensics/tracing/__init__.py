"""Proactive tracing (separate-and-trace, Fang et al. ICCV 2023): the seller makes traceable copies, the
investigator names the copy that adversarial examples were crafted on.

    record = make_copies("runs/c", "runs/copies", copies=5, calibration_images=x_cal)
    report = identify("runs/copies", evidence, public_key="keys/seller.pub")   # report.source, .confidence

The names below load on first use: `advforensics.tracing.names` (the CLI's vocabulary) stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"make_copies": "api", "identify": "api", "LearnedReport": "reports", "TraceReport": "reports",
          "TracedExample": "reports", "SellerRecord": "record", "load_copies": "record", "read_record": "record",
          "generate_keypair": "signing", "sign_record": "signing"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"advforensics.tracing.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'advforensics.tracing' has no attribute {name!r}")


__all__ = list(_HOMES)
