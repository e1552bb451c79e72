"""`advforensics attribution evaluate` and `predict`: measure an attributor on corpora, attribute new images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand
from advforensics.cli.options import OutputDir, device_option, emit_json, json_option, seed_option

@click.command("evaluate", cls=ForensicsCommand)
@click.option("--corpus", "corpus_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=OutputDir(), help="Report directory.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--single-task", "single_task", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Single-task models (attack, victim, hyper) for Delta_MTL; repeat the option.")
@click.option("--heldout", "heldout", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="A corpus made by code, victims or images the training corpus did not use (e.g. --grid "
                   "heldout, retrained victims, --start past the training images); every row is evaluated. "
                   "Repeat the option.")
@click.option("--reencode", "reencodings", multiple=True,
              help="Also evaluate the test split re-encoded: png, jpeg:Q, resize:S, noise:SD. Repeat the option.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@device_option
@seed_option
@json_option
def evaluate_cmd(corpus_dir: Path, model_path: Path, out: Path, split: str, single_task: tuple[Path, ...],
                 heldout: tuple[Path, ...], reencodings: tuple[str, ...], threads: int, device: str, seed: int,
                 json_path: Path | None) -> None:
    """Accuracy, RMSE (overall, per attack), params, FLOPs, confusion plots; Delta_MTL with --single-task.

    With an open-set attributor (trained with a calibration split), also the field report (field.md):
    open-set answers on the split, on its re-encodings and on every --heldout corpus, with intervals.

    \b
    Example:
      advforensics attribution evaluate --corpus runs/corpus --model runs/mtaa.safetensors --out runs/report \\
          --single-task runs/st-a.safetensors --single-task runs/st-v.safetensors --single-task runs/st-h.safetensors
      advforensics attribution evaluate --corpus runs/field --model runs/mtaa.safetensors --out runs/report \\
          --heldout runs/heldout --reencode jpeg:90
    """
    import torch

    from advforensics.attribution.evaluate import evaluate_files

    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    metrics = evaluate_files(corpus_dir, model_path, out, split=split, single_task=single_task, heldout=heldout,
                             reencodings=reencodings, device=device)
    for name, m in metrics.get("field", {}).items():
        click.echo(f"  {name}: attack {_share(m['attack_accuracy'])}, victim {_share(m['victim_accuracy'])}, "
                   f"unknown family -> unknown {_share(m['unknown_called_unknown'])}, clean -> not adversarial "
                   f"{_share(m['clean_called_not_adversarial'])}")
    click.echo(f"{metrics['kind']} on {split} (n={metrics['n']}): attack {100 * metrics.get('attack_accuracy', 0):.2f}% "
               f"victim {100 * metrics.get('victim_accuracy', 0):.2f}% RMSE {metrics.get('rmse') or float('nan'):.3f}"
               + (f" Delta_MTL {metrics['delta_mtl']:+.2f}%" if "delta_mtl" in metrics else "")
               + f"; report in {out}")
    emit_json(json_path, metrics)


def _share(rate: dict | None) -> str:
    return "-" if rate is None else f"{100 * rate['rate']:.2f}% of {rate['n']}"


@click.command("predict", cls=ForensicsCommand)
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--as-json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@click.option("--float-evidence", is_flag=True,
              help="Keep float inputs as they are (default: round to the 8-bit grid, as the corpus stores evidence).")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Ground truth (CSV or Parquet: attack, victim, optional strength and row); prints the metrics.")
@seed_option
@json_option
def predict_cmd(model_path: Path, source: Path, as_json: bool, float_evidence: bool, labels_path: Path | None,
                seed: int, json_path: Path | None) -> None:
    """Attribute images: attack family (or "not adversarial" / "unknown attack"), victim architecture and
    strength, with calibrated probabilities and each image's row in SOURCE.

    SOURCE is a PNG/JPEG/BMP file, a folder of them, an .npy, or an .npz (from `attacks run` or
    elsewhere: x_adv, adv, images, ... ; uint8, uint16 or float in [0, 1]; NCHW, NHWC or (N, H, W);
    rows a stored success mask marks as failed are left out).

    \b
    Example:
      advforensics attribution predict --model runs/mtaa.safetensors evidence.npz --json preds.json
      advforensics attribution predict --model runs/mtaa.safetensors evidence.npz --labels truth.csv
      (truth.csv: row,attack,victim,strength  e.g.  0,pgd-linf,resnet18,32 ; "not adversarial" for clean)
    """
    from advforensics.attribution.attributor import Attributor
    from advforensics.attribution.field import Truth, field_metrics, summary_row

    evidence = Attributor.read_for(model_path, source)  # first: a bad file fails before the model loads
    attributor = Attributor.load(model_path)
    truth = None if labels_path is None else Truth.from_table(labels_path, evidence.rows)
    if evidence.dropped:  # never silently: the row numbers in the names show which are left
        click.echo(evidence.summary(), err=True)
    answers = attributor.predict(evidence, float_evidence=float_evidence)
    names = evidence.names
    records = answers.records(names, evidence.rows)
    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        for rec in records:
            strength = rec["strength"]
            victim = "" if rec["victim"] is None else f", victim {rec['victim']} ({rec['victim_probability']:.3f})"
            click.echo(f"[{rec['row']}] {rec['source']}: attack {rec['attack']} ({rec['attack_probability']:.3f})"
                       f"{victim}" + ("" if strength is None else f", strength {rec['strength_unit']} {strength:.1f}"))
    payload: dict = {"model": str(model_path), "predictions": records}
    if truth is not None:
        metrics = field_metrics(answers, truth, group_by=())
        payload["metrics"] = metrics
        for key, value in summary_row(str(labels_path.name), metrics).items():
            click.echo(f"{key}: {value}")
    emit_json(json_path, payload)
