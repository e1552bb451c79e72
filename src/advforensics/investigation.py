"""One investigation: attribution of every image, tracing where a seller record is given, the two joined
per example, with the caveats that apply and a chain of custody.

    result = investigate("advs.npz", record="runs/copies", attributor="runs/mtaa.safetensors",
                         seller_key="keys/seller.pub")
    result.write("runs/investigation")      # report.html (self-contained), report.json, report.md, SHA256SUMS
    print(result.verdict)
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advforensics import __version__
from advforensics.errors import InputValidationError
from advforensics.evidence.io import Evidence, load_evidence
from advforensics.utils import atomic_write_text, sha256_file, write_json
from advforensics.vocab import Answer

log = logging.getLogger(__name__)
FORMAT = "advforensics-investigation/1"
LOW_CONFIDENCE = 0.9  # below it an attribution is flagged: a stated probability, not a verdict
NOT_ADVERSARIAL, UNKNOWN = Answer.NOT_ADVERSARIAL.value, Answer.UNKNOWN.value  # openset.py's answers


@dataclass
class Investigation:
    """What `investigate` found: a JSON-ready payload (see `to_dict`) and each image's pictures."""

    payload: dict[str, Any]
    images: list[tuple[bytes, bytes | None]] = field(repr=False)  # (thumbnail PNG, residual heat map PNG)

    @property
    def verdict(self) -> str:
        return str(self.payload["verdict"])

    def to_dict(self) -> dict[str, Any]:
        return self.payload

    def write(self, out_dir: str | Path) -> list[Path]:
        """report.html, report.json, report.md and SHA256SUMS (the reports' own hashes) into `out_dir`."""
        from advforensics.reporting.investigation import render_html, render_markdown

        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
        files = [root / "report.html", root / "report.json", root / "report.md"]
        atomic_write_text(files[0], render_html(self.payload, self.images))
        write_json(files[1], self.payload)
        atomic_write_text(files[2], render_markdown(self.payload))
        sums = "".join(f"{sha256_file(f)}  {f.name}\n" for f in files)
        atomic_write_text(root / "SHA256SUMS", sums)
        return [*files, root / "SHA256SUMS"]


def investigate(evidence: str | Path | Evidence, record: str | Path | None = None,
                attributor: str | Path | None = None, seller_key: str | Path | None = None,
                threshold: float = 0.99, command: str | None = None, query_log: str | Path | None = None,
                detector: str | Path | None = None, families: str | Path | None = None) -> Investigation:
    """Attribute every image (with an attributor file), trace them (with a seller record), join the two;
    with the seller's query log (and its detector), name the buyers whose queries show an attack.

    Evidence is read once, at the shape both models take (they must agree). A record is verified
    (hashes, ONNX copies, and its signature when `seller_key` is given) before anything is traced."""
    from advforensics.attribution.attributor import Attributor

    if record is None and attributor is None and query_log is None:
        raise InputValidationError("give a seller record (--record), an attributor (--attributor), a query log "
                                   "(--query-log) or several")
    if (query_log is None) != (detector is None) or (families is not None and query_log is None):
        raise InputValidationError("a query log needs its detector (--query-log with --detector, and --families "
                                   "only with both)")
    findings = None
    if query_log is not None:
        from advforensics.serving.forensics import examine_log

        findings = examine_log(query_log, detector, families)
    model = Attributor.load(attributor) if attributor is not None else None
    seller = None
    if record is not None:
        from advforensics.tracing.record import read_record

        seller = read_record(record, public_key=seller_key, warn=False)
    shape = _common_shape(model, seller) or (findings.image_shape if findings is not None else None)
    if not isinstance(evidence, Evidence):
        evidence = load_evidence(evidence, channels=shape[0], size=shape[1:])
    attribution = model.predict(evidence) if model is not None else None
    tracing = None
    if record is not None:
        from advforensics.tracing.api import identify

        tracing = identify(record, evidence, threshold=threshold, public_key=seller_key)
    examples = _examples(evidence, attribution, tracing)
    caveats = _caveats(evidence, model, seller, seller_key, tracing, examples)
    queries = _queries(findings, tracing) if findings is not None else None
    if queries is not None:
        caveats += queries.pop("caveats")
    payload = {
        "format": FORMAT, "title": f"Investigation of {Path(evidence.source).name}",
        "summary": _summary(examples, tracing), "examples": examples,
        "copies": _copies(tracing), "queries": queries, "caveats": caveats,
        "custody": _custody(evidence, record, attributor, seller_key, command,
                            [(query_log, "query log"), (detector, "query detector"), (families, "query families")]),
    }
    payload["verdict"] = _verdict(payload["summary"], tracing is not None, attribution is not None, threshold)
    if queries is not None:
        payload["verdict"] += " " + queries["verdict"]
    return Investigation(payload=payload, images=[_pictures(x) for x in evidence.x])


def _common_shape(model, seller) -> tuple[int, int, int] | None:  # type: ignore[no-untyped-def]
    shapes = {}
    if model is not None:
        shapes["attributor"] = tuple(model.image_shape)
    if seller is not None:
        shapes["record"] = tuple(int(v) for v in seller.input_shape)
    if len(set(shapes.values())) > 1:
        raise InputValidationError(f"the attributor takes {shapes['attributor']} images and the record's copies "
                                   f"{shapes['record']}: they are not for the same evidence")
    return next(iter(shapes.values()), None)


def _examples(evidence: Evidence, attribution, tracing) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    records = attribution.records(evidence.names, evidence.rows) if attribution is not None else None
    traced = _traced(tracing, evidence.rows) if tracing is not None else None
    out = []
    for i, (row, name) in enumerate(zip(evidence.rows, evidence.names)):
        entry: dict[str, Any] = {"row": row, "name": name, "attribution": None, "tracing": None}
        if records is not None:
            rec = records[i]
            entry["attribution"] = {k: rec[k] for k in ("attack", "attack_probability", "attack_probabilities",
                                                        "victim", "victim_probability", "strength", "strength_unit")}
        if traced is not None:
            entry["tracing"] = traced[i]
        entry["caveats"] = _example_caveats(entry)
        out.append(entry)
    return out


def _traced(tracing, rows: list[int]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    from advforensics.tracing.reports import LearnedReport

    per_copy = (1.0 - tracing.false_alarm).tolist() if isinstance(tracing, LearnedReport) else None
    return [{"copy": e.copy, "confidence": e.confidence, "accused": e.accused,
             "copy_confidences": [round(float(v), 6) for v in per_copy[i]] if per_copy else []}
            for i, e in enumerate(tracing.examples(rows))]


def _example_caveats(entry: dict[str, Any]) -> list[str]:
    notes = []
    att, tr = entry["attribution"], entry["tracing"]
    if att is not None:
        if att["attack"] == UNKNOWN:
            notes.append("no known attack family fits: unknown attack")
        elif att["attack_probability"] < LOW_CONFIDENCE:
            notes.append(f"attribution uncertain (p = {att['attack_probability']:.2f})")
    if tr is not None and tr["copy"] is not None and not tr["accused"]:
        notes.append("traced copy below the accusation threshold")
    if att is not None and tr is not None:
        if att["attack"] == NOT_ADVERSARIAL and tr["accused"]:
            notes.append(f"rules disagree: attribution reads a clean image, tracing accuses copy {tr['copy']}")
        if att["attack"] not in (NOT_ADVERSARIAL, UNKNOWN) and tr["copy"] is None:
            notes.append("rules disagree: attribution names an attack, tracing names none of the copies")
    return notes


def _summary(examples: list[dict[str, Any]], tracing) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    answers = [e["attribution"] for e in examples if e["attribution"] is not None]
    attacks = Counter(a["attack"] for a in answers if a["attack"] not in (NOT_ADVERSARIAL, UNKNOWN))
    victims = Counter(a["victim"] for a in answers if a["attack"] not in (NOT_ADVERSARIAL, UNKNOWN) and a["victim"])
    summary: dict[str, Any] = {
        "n_examples": len(examples), "attacked": sum(attacks.values()) if answers else None,
        "not_adversarial": sum(a["attack"] == NOT_ADVERSARIAL for a in answers) if answers else None,
        "unknown": sum(a["attack"] == UNKNOWN for a in answers) if answers else None,
        "attacks": dict(attacks.most_common()), "victims": dict(victims.most_common()),
        "traced_copy": None, "trace_confidence": None, "trace_accused": None, "one_source": None,
    }
    if tracing is not None:
        summary.update(traced_copy=tracing.source, trace_confidence=tracing.confidence,
                       one_source=bool(tracing.one_source), trace_accused=bool(tracing.accused))
    return summary


def _copies(tracing) -> list[dict[str, Any]] | None:  # type: ignore[no-untyped-def]
    from advforensics.tracing.reports import LearnedReport

    if not isinstance(tracing, LearnedReport):
        return None
    pooled, accused, null = tracing.copy_confidences(), tracing.accusations(), tracing.null_confidence()
    return [{"copy": j, "pooled_confidence": round(float(pooled[j]), 6), "null_confidence": round(null, 6),
             "accused_examples": int(accused[j])} for j in range(tracing.num_copies)]


def _queries(findings, tracing) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The log's part: every buyer's finding, the flagged ones named, and whether the log bears out the
    copy that tracing accuses (a buyer of that copy flagged) or not."""
    flagged = findings.flagged
    named = ", ".join(f"{b.verdict.buyer} (copy {b.copy_index}, at query {b.verdict.flagged_at}"
                      + (f", {b.family}" if b.family else "") + ")" for b in flagged)
    verdict = (f"The query log flags {len(flagged)} of {len(findings.buyers)} buyers: {named}."
               if flagged else f"The query log flags none of its {len(findings.buyers)} buyers.")
    caveats = [f"the query log ({findings.log}) holds only what reached the endpoint: an attack run offline "
               "(on a leaked copy, a surrogate) or before the log began leaves nothing in it"]
    corroborated = None
    if tracing is not None and tracing.accused and tracing.source is not None:
        holders = [b.verdict.buyer for b in flagged if b.copy_index == tracing.source]
        corroborated = bool(holders)
        verdict += (f" It bears out the traced copy {tracing.source}: its buyer {', '.join(holders)} was flagged."
                    if holders else f" No buyer of the traced copy {tracing.source} was flagged in the log.")
        if not holders:
            caveats.append(f"tracing accuses copy {tracing.source} but the log shows no attack by its buyer: "
                           "an offline attack, or a copy passed on")
    if any(b.family == "unknown" for b in flagged):
        caveats.append("a flagged buyer's query pattern fits none of the known families: unknown attack family")
    return {**findings.to_dict(), "flagged": [b.verdict.buyer for b in flagged], "corroborates_trace": corroborated,
            "verdict": verdict, "caveats": caveats}


def _caveats(evidence: Evidence, model, seller, seller_key, tracing, examples) -> list[str]:  # type: ignore[no-untyped-def]
    notes = []
    if evidence.dropped:
        notes.append(f"{len(evidence.dropped)} rows of {Path(evidence.source).name} were left out: its success "
                     "mask marks them as failed attacks")
    if "->" in evidence.layout:
        notes.append(f"the evidence was read as {evidence.layout} (transposed to channels first)")
    if seller is not None and seller_key is None:
        notes.append("the seller record's signature was not checked (no seller key): its hashes catch "
                     "corruption, not a forger")
    if tracing is not None and not tracing.one_source:
        notes.append("the examples name several copies beyond the stated error rate: one verdict per group")
    if model is not None:
        families = ", ".join(model.card.attack_names)
        notes.append(f"attribution knows the attack families {families}: another family (a hard-label or "
                     "query attack, say) reads as the nearest of these unless it is called \"unknown attack\"")
        victims = ", ".join(model.card.victim_names)
        notes.append(f"attribution knows the victims {victims}; a victim of another architecture is reported as "
                     "the nearest of these")
        if model.card.open_set is None:
            notes.append("the attributor has no open-set rule: it cannot answer \"unknown attack\" and its "
                         "probabilities are uncalibrated")
    disagreements = sum(any(n.startswith("rules disagree") for n in e["caveats"]) for e in examples)
    if disagreements:
        notes.append(f"tracing and attribution disagree on {disagreements} of {len(examples)} images")
    notes.append("heat maps show each image minus its 3x3 median: an estimate of the perturbation (the clean "
                 "image is unknown), not the perturbation itself")
    return notes


def _verdict(summary: dict[str, Any], traced: bool, attributed: bool, threshold: float) -> str:
    n = summary["n_examples"]
    parts = [f"{n} image{'s' if n != 1 else ''} examined."]
    if attributed:
        attacks = ", ".join(f"{name} ({count})" for name, count in summary["attacks"].items()) or "none"
        victims = ", ".join(f"{name} ({count})" for name, count in summary["victims"].items()) or "none named"
        parts.append(f"{summary['attacked']} look adversarial: attacks {attacks}; victims {victims}.")
        if summary["not_adversarial"]:
            parts.append(f"{summary['not_adversarial']} read as not adversarial.")
        if summary["unknown"]:
            parts.append(f"{summary['unknown']} match no known attack (unknown attack).")
    if traced:
        copy, confidence = summary["traced_copy"], summary["trace_confidence"]
        if not summary["one_source"]:
            parts.append("They were crafted on several copies: see the per-group verdicts.")
        elif copy is None:
            stated = "no calibrated confidence" if confidence is None else f"confidence {confidence:.4f}"
            parts.append(f"They match none of the seller's copies ({stated}).")
        elif summary["trace_accused"]:
            parts.append(f"They were crafted on copy {copy}, accused at confidence {confidence:.4f} "
                         f"(threshold {threshold}).")
        elif confidence is None:  # a record separated without calibration: a copy, no stated confidence
            parts.append(f"They point to copy {copy}, with no confidence (the record was not calibrated: "
                         "`trace separate --calibrate-data`), so no one is accused.")
        else:
            parts.append(f"They point to copy {copy}, at confidence {confidence:.4f}: below the accusation "
                         f"threshold {threshold}, undecided.")
    return " ".join(parts)


def _custody(evidence: Evidence, record, attributor, seller_key, command: str | None,  # type: ignore[no-untyped-def]
             others: list[tuple[str | Path | None, str]] = ()) -> dict[str, Any]:
    source = Path(evidence.source)
    files = [(p, "evidence") for p in (sorted(Path(n) for n in evidence.names) if source.is_dir() else [source])]
    if record is not None:
        files += [(p, "seller record") for p in sorted(Path(record).iterdir())
                  if p.is_file() and not p.name.startswith(".")]
    if attributor is not None:
        files.append((Path(attributor), "attributor"))
    if seller_key is not None:
        files.append((Path(seller_key), "seller public key"))
    files += [(Path(path), role) for path, role in others if path is not None and Path(path).is_file()]
    return {"tool": f"advforensics {__version__}", "command": command or shlex.join(sys.argv),
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "files": [{"path": str(p), "role": role, "sha256": sha256_file(p)} for p, role in files]}


def _pictures(x: torch.Tensor, scale: int = 6) -> tuple[bytes, bytes]:
    """A nearest-neighbour thumbnail of one image (C, H, W) in [0, 1] and its residual heat map."""
    from PIL import Image
    from scipy.ndimage import median_filter

    image = x.numpy()
    residual = np.abs(image - median_filter(image, size=(1, 3, 3), mode="nearest")).mean(0)  # (H, W)
    heat = residual / max(float(residual.max()), 1e-6)
    pixels = np.round(image * 255).astype(np.uint8)
    thumb = Image.fromarray(pixels[0] if len(pixels) == 1 else pixels.transpose(1, 2, 0))
    import matplotlib

    colours = (matplotlib.colormaps["inferno"](heat)[..., :3] * 255).astype(np.uint8)
    return tuple(_png(im.resize((im.width * scale, im.height * scale), Image.NEAREST))  # type: ignore[return-value]
                 for im in (thumb, Image.fromarray(colours)))


def _png(image) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
