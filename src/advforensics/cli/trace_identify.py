"""`advforensics trace identify`: name the copy that adversarial examples were crafted on."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand
from advforensics.cli.options import emit_json, json_option, seed_option, seller_key_option
from advforensics.errors import InputValidationError
from advforensics.tracing.names import DEFAULT_RULE, SCORE_RULES

@click.command("identify", cls=ForensicsCommand)
@click.option("--record", "record_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory written by `trace separate`.")
@click.option("--examples", "examples_path", required=True, type=click.Path(path_type=Path),
              help="Evidence: an .npz/.npy (x_adv or another library's key names, NCHW or NHWC), a PNG/JPEG "
                   "file, or a folder of them.")
@click.option("--show", type=int, default=20, show_default=True, help="Per-example rows printed.")
@click.option("--rule", type=click.Choice(SCORE_RULES), default=None,
              help="Tracing rule (default: the record's: learned where the seller fitted it, else its main "
                   f"formula rule, else {DEFAULT_RULE}).")
@click.option("--threshold", type=float, default=0.99, show_default=True,
              help="learned rule: the probability at which a copy is accused.")
@seller_key_option
@seed_option
@json_option
def identify_cmd(record_dir: Path, examples_path: Path, show: int, rule: str | None, threshold: float,
                 seller_key: Path | None, seed: int, json_path: Path | None) -> None:
    """Name the copy that adversarial examples were crafted on (per example and pooled), or none.

    Every ONNX copy in the record directory is checked against the record's hash; with --seller-key
    the record itself must carry the seller's signature (a forger can recompute plain hashes).

    \b
    Example:
      advforensics trace identify --record runs/copies --examples advs.npz --seller-key keys/seller.pub \\
          --json trace.json
    """
    import torch

    from advforensics.evidence import load_evidence
    from advforensics.tracing.api import identify
    from advforensics.tracing.reports import LearnedReport
    from advforensics.tracing.record import read_record
    from advforensics.tracing.signing import verify_record

    if not 0.5 < threshold < 1.0:
        raise InputValidationError(f"--threshold must be in (0.5, 1), got {threshold}")
    torch.manual_seed(seed)
    signer = verify_record(record_dir, seller_key) if seller_key is not None else None  # before anything else
    record = read_record(record_dir, warn=False)  # for the input shape; identify() verifies again and warns
    c, h, w = record.input_shape
    evidence = load_evidence(examples_path, channels=c, size=(h, w))
    if signer:
        click.echo(f"record signature verified (seller key {signer[:16]})")
    click.echo(evidence.summary())
    report = identify(record_dir, evidence, rule=rule, threshold=threshold, public_key=seller_key)
    payload = report.to_dict()
    payload["record_signature"] = {"verified": signer is not None, "public_key_sha256": signer}
    payload["evidence"] = {"source": evidence.source, "layout": evidence.layout, "dropped_rows": evidence.dropped}
    if isinstance(report, LearnedReport):
        _print_learned(payload, show)
    else:
        _print_formula(payload, evidence.rows, show)
    emit_json(json_path, payload)


def _named(source: int | None) -> str:
    return "none of these copies" if source is None else f"copy {source}"


def _print_learned(payload: dict, show: int) -> None:
    click.echo(f"{payload['num_examples']} examples, {payload['num_copies']} copies, rule learned "
               f"(accused at confidence >= {payload['threshold']}: the learned probability and a formula "
               "rule's null must both reach it)")
    for row in payload["per_example"][:show]:
        verdict = "ACCUSED" if row["accused"] else "undecided" if row["source"] is not None else ""
        click.echo(f"  row {row['row']}: {_named(row['source'])}  confidence {row['confidence']:.4f}  {verdict}".rstrip())
    if not payload["one_source"]:
        click.echo(f"several sources: copies accused {payload['accusations']} times; one verdict per group")
    for group in payload["groups"]:
        label = "pooled" if payload["one_source"] else f"group of {len(group['rows'])}"
        click.echo(f"{label}: {_named(group['source'])}  confidence {group['confidence']:.4f}"
                   + ("  ACCUSED" if group["accused"] else ""))


def _print_formula(payload: dict, rows: list[int], show: int) -> None:
    calibrated = "false_alarm_rate" in payload["aggregate"]
    click.echo(f"{payload['num_examples']} examples, {payload['num_copies']} copies, rule {payload['rule']}"
               + ("" if calibrated else " (uncalibrated for this rule: no confidence)"))
    for row, entry in list(zip(rows, payload["per_example"]))[:show]:
        extra = f"  confidence {entry['confidence']:.3f}" if calibrated else ""
        click.echo(f"  row {row}: copy {entry['source']}  score {max(entry['scores']):+.4f}  "
                   f"ranking {entry['ranking']}{extra}")
    agg = payload["aggregate"]
    if not payload["one_source"]:
        click.echo(f"several sources: copies accused {payload['accusations']} times; no single verdict "
                   "(the learned rule splits the file per source)")
    click.echo(f"aggregate: copy {agg['source']}  ranking {agg['ranking']}"
               + (f"  confidence {agg['confidence']:.4f} (geometric mean of the examples' false-alarm rates)"
                  if "confidence" in agg else ""))
