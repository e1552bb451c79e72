"""The seller's private record: what was shipped to whom, with hashes that detect tampering.

A record directory holds
  record.json          permutations, alpha, tau, hashes, calibration (this file is the secret)
  classifier.*         C as a zoo checkpoint (safetensors + card)
  tracer.safetensors   T_0
  copy_<i>.onnx        copy i for serving (serving.py): input x, one output, the label (int64)

The ONNX file answers with the label alone, so an endpoint that runs it is a hard-label black box.
The file itself is a white box: it holds every weight of C and of the tracer (and so, with the
permutation, everything that makes the copy). It is for the seller's own serving, never for handing
over to a buyer.

Hashes: base_hash = content hash of C's parameters, tracer_hash = the tracer's content hash,
copy_hash = sha256 of (base_hash, tracer_hash, permutation, alpha, tau, and the tracer block where it
is not 0, so records of one-block copies keep their hashes), onnx_sha256 = the shipped
file. record_hash covers the whole JSON, so an edited permutation or alpha fails to load
(CheckpointError) instead of silently mis-tracing.

Those hashes catch corruption, not a forger who edits the record and recomputes them. A signed
record (record.sig, signing.py) closes that: given the seller's public key, read_record and
load_copies verify the signature over record.json before anything else; without one they load
as before and log a warning. load_copies also checks every ONNX copy present against its
onnx_sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advforensics.errors import CheckpointError, InputValidationError
from advforensics.tracing.copies import CopyParams, CopySet, ModelCopy
from advforensics.tracing.names import DEFAULT_RULE
from advforensics.tracing.serving import export_onnx, onnx_labels
from advforensics.tracing.calibration import Calibration
from advforensics.tracing.signing import (SIGNATURE_FILE, load_private_key, signature_fingerprint, sign_record,
                                          verify_record_bytes)
from advforensics.tracing.tracer import Tracer, load_tracer, save_tracer, state_hash
from advforensics.utils import sha256_file, write_json

log = logging.getLogger(__name__)
RECORD_FORMAT = "advforensics-trace-record/1"
RECORD_FILE = "record.json"
TRACER_FILE = "tracer.safetensors"
CLASSIFIER_BASE = "classifier"


def copy_hash(base_hash: str, tracer_hash: str, permutation: list[int], params: CopyParams,
              tracer_block: int = 0) -> str:
    fields = {"base": base_hash, "tracer": tracer_hash, "perm": list(map(int, permutation)),
              "alpha": float(params.alpha), "tau": float(params.tau)}
    if tracer_block:
        fields["block"] = int(tracer_block)
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CopyEntry:
    index: int
    permutation: list[int]
    copy_hash: str
    onnx_file: str | None = None
    onnx_sha256: str | None = None
    tracer_block: int = 0  # which K tracer outputs the copy reads (permutations.copy_layout)


@dataclass
class SellerRecord:
    alpha: float
    tau: float
    num_classes: int
    input_shape: list[int]
    base_hash: str
    tracer_hash: str
    tracer_kind: str
    copies: list[CopyEntry]
    classifier_file: str = CLASSIFIER_BASE
    tracer_file: str = TRACER_FILE
    calibration: dict[str, Any] | None = None  # the main rule's (what `identify` uses by default)
    info: dict[str, Any] = field(default_factory=dict)
    format: str = RECORD_FORMAT
    other_calibrations: dict[str, dict[str, Any]] | None = None  # rule -> calibration, for `identify --rule`
    learned: dict[str, Any] | None = None  # the fitted learned rule (learned.py), the default when present
    # C's architecture (ModelConfig): base_hash covers its tensors, not the forward they run in (a card's
    # revision changes the ResNet stem); None in records written before this field
    classifier_architecture: dict[str, Any] | None = None

    @property
    def default_rule(self) -> str:
        """The learned rule where one was fitted, else the main calibration's rule, else DEFAULT_RULE."""
        if self.learned is not None:
            return "learned"
        return (self.calibration or {}).get("rule", "dol") if self.calibration else DEFAULT_RULE

    def calibration_for(self, rule: str | None) -> dict[str, Any] | None:
        """The stored calibration of `rule` (None: the main one), or None if it was not measured."""
        if rule is None or (self.calibration is not None and self.calibration.get("rule", "dol") == rule):
            return self.calibration
        return (self.other_calibrations or {}).get(rule)

    @property
    def params(self) -> CopyParams:
        return CopyParams(alpha=self.alpha, tau=self.tau)

    @property
    def permutations(self) -> torch.Tensor:
        return torch.tensor([c.permutation for c in self.copies], dtype=torch.int64)

    @property
    def blocks(self) -> torch.Tensor:
        return torch.tensor([c.tracer_block for c in self.copies], dtype=torch.int64)

    def payload(self) -> dict[str, Any]:
        return asdict(self)


def _record_hash(payload: dict[str, Any]) -> str:
    body = {k: v for k, v in payload.items() if k != "record_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_record(record: SellerRecord, directory: Path) -> Path:
    payload = record.payload()
    payload["record_hash"] = _record_hash(payload)
    path = Path(directory) / RECORD_FILE
    write_json(path, payload)
    return path


KeyLike = str | Path  # a PEM key file (signing.py)


def read_record(directory: str | Path, public_key: KeyLike | None = None, warn: bool = True) -> SellerRecord:
    """Load and verify record.json; a missing, edited or foreign file -> CheckpointError.

    public_key: the seller's public key file; given, the signature (record.sig) is verified before
    anything else is read, and an unsigned record, another key's or a bad signature -> CheckpointError.
    Not given, the record loads as before and a warning says it was not authenticated (warn=False:
    no warning, for a caller that loads the record again and warns then)."""
    path = Path(directory) / RECORD_FILE
    if not path.is_file():
        raise CheckpointError(f"no seller record at {path}")
    data = path.read_bytes()  # verified and parsed from the same bytes
    if public_key is not None:
        verify_record_bytes(directory, data, public_key)
    elif warn:
        _warn_unauthenticated(Path(directory))
    try:
        payload = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != RECORD_FORMAT:
        raise CheckpointError(f"{path} is not an advforensics seller record")
    if payload.get("record_hash") != _record_hash(payload):
        raise CheckpointError(f"{path} fails its record hash: the record was edited or corrupted")
    payload.pop("record_hash")
    try:
        payload["copies"] = [CopyEntry(**c) for c in payload["copies"]]
        record = SellerRecord(**payload)
    except TypeError as error:
        raise CheckpointError(f"{path} has unexpected fields: {error}") from None
    for entry in record.copies:
        expected = copy_hash(record.base_hash, record.tracer_hash, entry.permutation, record.params,
                             entry.tracer_block)
        if entry.copy_hash != expected:
            raise CheckpointError(f"copy {entry.index} in {path} fails its copy hash")
    return record


def _warn_unauthenticated(directory: Path) -> None:
    if not (directory / SIGNATURE_FILE).exists():
        log.warning("%s is unsigned: an unsigned record's hashes catch corruption, not a forger who recomputes "
                    "them; sign it with `advforensics trace sign`", directory)
    else:
        signer = signature_fingerprint(directory)
        log.warning("%s is signed (%s) but the signature was not checked: pass --seller-key FILE.pub "
                    "(public_key= in the library) to verify it", directory,
                    f"key {signer[:16]}" if signer else f"unreadable {SIGNATURE_FILE}")


def check_onnx_copies(record: SellerRecord, directory: str | Path) -> None:
    """Every ONNX copy the record names that is in `directory` must match its onnx_sha256
    (else CheckpointError); a named copy that is absent is only logged (it may be served elsewhere)."""
    for entry in record.copies:
        if entry.onnx_file is None:
            continue
        path = Path(directory) / entry.onnx_file
        if not path.is_file():
            log.warning("%s is named by the record but absent from %s; not checked", entry.onnx_file, directory)
        elif sha256_file(path) != entry.onnx_sha256:
            raise CheckpointError(f"{entry.onnx_file} does not match the record (modified or replaced)")


def separate(classifier: nn.Module, tracer: Tracer, permutations: torch.Tensor, params: CopyParams,
             out_dir: str | Path, export: bool = True, calibration: Calibration | None = None,
             info: dict[str, Any] | None = None, probe: torch.Tensor | None = None,
             other_calibrations: dict[str, Calibration] | None = None,
             learned: dict[str, Any] | None = None, blocks: torch.Tensor | None = None) -> SellerRecord:
    """Build the copies, write C, T_0, each copy's ONNX file and the seller record into `out_dir`.

    `blocks` (m,): each copy's tracer block (permutations.copy_layout); None: all 0.

    `probe` (B, C, H, W): inputs on which every exported ONNX copy must give the same labels as the
    PyTorch copy (else CheckpointError). Refuses to write into a directory that already holds a record."""
    from advforensics.models import save_model

    out = Path(out_dir)
    if (out / RECORD_FILE).exists():
        raise InputValidationError(f"{out} already holds a seller record; choose a new directory")
    copies = CopySet(classifier, tracer, permutations, params, blocks=blocks)
    c, h, w = tracer.input_shape
    out.mkdir(parents=True, exist_ok=True)
    save_model(classifier, out / CLASSIFIER_BASE, card={"role": "tracing base classifier C"}, overwrite=True)
    tracer_hash = save_tracer(tracer, out / TRACER_FILE)
    base_hash = state_hash(classifier)
    entries = []
    example = torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(0))
    for i in range(copies.num_copies):
        perm, block = copies.permutations[i].tolist(), int(copies.blocks[i])
        entry = CopyEntry(index=i, permutation=perm, tracer_block=block,
                          copy_hash=copy_hash(base_hash, tracer_hash, perm, params, block))
        if export:
            onnx_path = out / f"copy_{i}.onnx"
            export_onnx(copies.copy(i), onnx_path, example)
            if probe is not None:
                agree = onnx_labels(onnx_path, probe) == copies.copy(i)(probe).argmax(1)
                if not bool(agree.all()):
                    raise CheckpointError(f"ONNX copy {i} disagrees with PyTorch on {int((~agree).sum())} probe inputs")
            entry.onnx_file = onnx_path.name
            entry.onnx_sha256 = sha256_file(onnx_path)
        entries.append(entry)
    record = SellerRecord(alpha=float(params.alpha), tau=float(params.tau), num_classes=copies.num_classes,
                          input_shape=[c, h, w], base_hash=base_hash, tracer_hash=tracer_hash,
                          tracer_kind=tracer.kind, copies=entries,
                          calibration=calibration.to_dict() if calibration is not None else None,
                          info=dict(info or {}),
                          other_calibrations={rule: cal.to_dict() for rule, cal in other_calibrations.items()}
                          if other_calibrations else None, learned=learned,
                          classifier_architecture=classifier.config.to_dict())
    write_record(record, out)
    return record


def load_copies(directory: str | Path, public_key: KeyLike | None = None,
                warn: bool = True) -> tuple[SellerRecord, CopySet]:
    """Verify the record (its signature first, given the seller's `public_key`; see read_record) and
    rebuild the CopySet from the stored C and T_0, every hash checked, ONNX copies included."""
    from advforensics.models import load_model

    record = read_record(directory, public_key=public_key, warn=warn)
    classifier, _ = load_model(Path(directory) / record.classifier_file)
    classifier.eval()
    if state_hash(classifier) != record.base_hash:
        raise CheckpointError("the stored classifier is not the base model this record was made with")
    if record.classifier_architecture is not None and classifier.config.to_dict() != record.classifier_architecture:
        raise CheckpointError("the stored classifier's card describes another architecture than the record's "
                              f"({record.classifier_file}.json edited?)")
    tracer = load_tracer(Path(directory) / record.tracer_file, expected_hash=record.tracer_hash)
    check_onnx_copies(record, directory)
    return record, CopySet(classifier, tracer, record.permutations, record.params, blocks=record.blocks)


def sign_existing_record(directory: str | Path, signing_key: KeyLike, overwrite: bool = False) -> str:
    """Sign a record already on disk (e.g. a legacy one) after checking every hash in it (C, the
    tracer, the ONNX copies present); returns the key's fingerprint. An existing record.sig is kept
    unless overwrite=True."""
    key = load_private_key(signing_key)  # a bad key file fails before the (slower) checks
    if (Path(directory) / SIGNATURE_FILE).exists() and not overwrite:
        raise InputValidationError(f"{Path(directory) / SIGNATURE_FILE} already exists; pass --overwrite to "
                                   "replace the signature")
    load_copies(directory, warn=False)
    return sign_record(directory, key, overwrite=overwrite)


def identify_onnx(record: SellerRecord, path: str | Path) -> int:
    """Which of our copies an ONNX file is (by its sha256); a foreign file -> CheckpointError."""
    digest = sha256_file(path)
    for entry in record.copies:
        if entry.onnx_sha256 == digest:
            return entry.index
    raise CheckpointError(f"{path} is not one of the copies in this record (sha256 {digest[:12]}...)")


def copyset_from_copies(copies: list[ModelCopy]) -> CopySet:
    """Reassemble a CopySet from buyer copies; copies of different base models or tracers -> error."""
    if not copies:
        raise InputValidationError("need at least one copy")
    first = copies[0]
    base, tracer = state_hash(first.classifier), first.tracer.content_hash()
    for i, other in enumerate(copies[1:], start=1):
        if state_hash(other.classifier) != base:
            raise InputValidationError(f"copy {i} has a different base classifier than copy 0; cannot trace them together")
        if other.tracer.content_hash() != tracer:
            raise InputValidationError(f"copy {i} has a different tracer than copy 0; cannot trace them together")
        if (other.alpha, other.tau) != (first.alpha, first.tau):
            raise InputValidationError(f"copy {i} has different alpha/tau than copy 0")
    read = torch.stack([c.inverse for c in copies])  # (m, K) tracer outputs, block offset included
    k = read.shape[1]
    inverse, blocks = read % k, read[:, 0] // k
    perms = torch.empty_like(inverse)
    perms.scatter_(1, inverse, torch.arange(k).expand_as(inverse).contiguous())
    return CopySet(first.classifier, first.tracer, perms, CopyParams(alpha=first.alpha, tau=first.tau),
                   blocks=blocks)
