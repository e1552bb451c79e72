"""The tracing library in two calls: `make_copies` (the seller) and `identify` (the investigator).

    import advforensics as af
    record = af.tracing.make_copies("runs/c", "runs/copies", copies=5, alpha=0.15,
                                    calibration_images=x_cal, fit_images=(x_fit, y_fit), signing_key="keys/seller")
    report = af.tracing.identify("runs/copies", af.evidence.load("advs.npz"), public_key="keys/seller.pub")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.evidence.io import Evidence
from advforensics.tracing.calibration import Calibration, calibrate_rules
from advforensics.tracing.copies import CopyParams, CopySet
from advforensics.tracing.reports import CONFIDENT, LearnedReport, TraceReport, trace_learned, trace_scores
from advforensics.tracing.learned import fit_rule, scorer_from_dict
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES, SCORE_RULES
from advforensics.tracing.permutations import copy_layout, max_copies, tracer_blocks
from advforensics.tracing.record import SellerRecord, load_copies, separate
from advforensics.tracing.scores import rule_scores
from advforensics.tracing.signing import load_private_key, sign_record
from advforensics.tracing.tracer import Tracer, create_tracer

log = logging.getLogger(__name__)


def make_copies(classifier: nn.Module | str | Path, out_dir: str | Path, copies: int = 5, alpha: float = 0.15, tau: float = 2.0,
                tracer: Tracer | None = None, calibration_images: torch.Tensor | None = None,
                fit_images: tuple[torch.Tensor, torch.Tensor] | None = None, rule: str = DEFAULT_RULE,
                export: bool = True, seed: int = 0, info: dict[str, Any] | None = None,
                signing_key: str | Path | None = None, learned_features: str = "base") -> SellerRecord:
    """Make m traceable copies of `classifier` and write the seller record into a new `out_dir`.

    calibration_images: clean images whose DeepFool boundary points calibrate the formula rules' null.
    fit_images: clean (images, labels), ideally other images than the calibration's, on which the
    seller simulates attackers and fits the learned rule (the default rule of the record).
    classifier: the model, or the path of a zoo checkpoint. signing_key: the seller's private key file
    (`trace keygen`); the record is then signed (record.sig), so that investigators can verify it.
    learned_features: the learned rule's feature set, "base" (one shared pass) or "squeezed" (also C's
    label on the contrast-stretched example: traces examples pushed to fool every copy far better, at
    one more pass of C per traced example; see docs/tracing.md)."""
    key = load_private_key(signing_key) if signing_key is not None else None  # a bad key fails before the work
    if isinstance(classifier, (str, Path)):
        from advforensics.models import load_model

        classifier = load_model(classifier)[0]
    classifier.eval()
    config = classifier.config
    size = tuple(config.image_size) if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    perms, blocks = copy_layout(int(config.num_classes), copies)
    needed = int(config.num_classes) * tracer_blocks(int(config.num_classes), copies)
    if tracer is None:
        tracer = create_tracer("random", num_outputs=needed, in_channels=config.in_channels,
                               image_size=size, seed=seed)
    elif tracer.num_outputs < needed:
        raise InputValidationError(
            f"{copies} copies of {config.num_classes} classes need a tracer with {needed} outputs "
            f"({max_copies(int(config.num_classes))} copies per {config.num_classes}); this one has {tracer.num_outputs}")
    if rule not in FORMULA_RULES:
        raise InputValidationError(f"main formula rule must be one of {', '.join(FORMULA_RULES)}")
    params = CopyParams(alpha=alpha, tau=tau)
    copyset = CopySet(classifier, tracer, perms, params, blocks=blocks)
    calibration, others, probe = None, None, None
    if calibration_images is not None:
        calibrations = calibrate_rules(copyset, calibration_images, seed=seed)
        calibration = calibrations.pop(rule)
        others = calibrations
        probe = calibration_images[:64]
    learned = (fit_rule(copyset, *fit_images, seed=seed, features=learned_features)
               if fit_images is not None else None)
    record = separate(classifier, tracer, perms, params, out_dir, export=export, calibration=calibration, probe=probe,
                      info=dict(info or {}, seed=seed), other_calibrations=others, learned=learned,
                      blocks=blocks)
    if key is not None:
        sign_record(out_dir, key)
    return record


def identify(record_dir: str | Path, evidence: Evidence | torch.Tensor, rule: str | None = None,
             threshold: float = CONFIDENT, public_key: str | Path | None = None) -> LearnedReport | TraceReport:
    """Name the copy that examples were crafted on, under `rule` (default: the record's, which is the
    learned rule where the seller fitted one). Formula rules are calibrated where the record holds
    their calibration.

    public_key: the seller's public key file (`trace keygen`'s .pub); given, the record's signature is
    verified first and a forged or unsigned record -> CheckpointError; not given, a warning says the
    record was not authenticated. Every ONNX copy in the record directory is checked against its hash."""
    record, copies = load_copies(record_dir, public_key=public_key)
    x, rows = (evidence.x, evidence.rows) if isinstance(evidence, Evidence) else (evidence, None)
    rule = rule or record.default_rule
    if rule not in SCORE_RULES:
        raise InputValidationError(f"unknown score rule {rule!r}; choose one of {', '.join(SCORE_RULES)}")
    if rule == "learned":
        if record.learned is None:
            raise InputValidationError("this record has no learned rule; remake the copies with fit images "
                                       "(trace separate --calibrate-data) or choose --rule proximity")
        calibrations = {name: Calibration.from_dict(record.calibration_for(name)) for name in FORMULA_RULES
                        if record.calibration_for(name)}
        return trace_learned(copies, scorer_from_dict(record.learned), x, rows, threshold, calibrations)
    stored = record.calibration_for(rule)
    calibration = Calibration.from_dict(stored) if stored else None
    return trace_scores(rule_scores(copies, x, (rule,))[rule], rule, calibration)

