"""Proactive tracing (separate-and-trace, Fang et al. ICCV 2023): the seller makes traceable copies, the
investigator names the copy that adversarial examples were crafted on.

    record = make_copies("runs/c", "runs/copies", copies=5, calibration_images=x_cal)
    report = identify("runs/copies", evidence, public_key="keys/seller.pub")   # report.source, .confidence
"""

from advforensics.tracing.api import identify, make_copies
from advforensics.tracing.identify import LearnedReport, TracedExample, TraceReport
from advforensics.tracing.record import SellerRecord, load_copies, read_record
from advforensics.tracing.signing import generate_keypair, sign_record

__all__ = ["make_copies", "identify", "LearnedReport", "TraceReport", "TracedExample", "SellerRecord", "load_copies",
           "read_record", "generate_keypair", "sign_record"]
