"""`advforensics trace`: separate a classifier into traceable copies, and trace adversarial examples."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from advforensics.cli.common import emit_json, handle_errors, json_option, load_image_array, seed_option
from advforensics.errors import InputValidationError


@click.group("trace")
def trace() -> None:
    """Proactive tracing (separate-and-trace, Fang et al. ICCV 2023).

    \b
    Example:
      advforensics trace separate --classifier runs/lenet.safetensors --copies 5 --alpha 0.15 --out runs/copies
      advforensics trace identify --record runs/copies --examples advs.npz
    """


@trace.command("separate")
@click.option("--classifier", "classifier_path", required=True, type=click.Path(path_type=Path),
              help="Zoo checkpoint of C (<base>.safetensors with its .json card).")
@click.option("--copies", "num_copies", type=int, default=5, show_default=True, help="Number of copies m.")
@click.option("--alpha", type=float, default=0.15, show_default=True, help="Weight of the tracer.")
@click.option("--tau", type=float, default=2.0, show_default=True, help="Softmax temperature of C.")
@click.option("--tracer", "tracer_kind", default="random", show_default=True,
              help="Tracer kind (random|vae) or a tracer .safetensors file.")
@click.option("--length-scale", type=float, default=1.5, show_default=True, help="random tracer: length scale l.")
@click.option("--gain", type=float, default=0.8, show_default=True, help="random tracer: gain g.")
@click.option("--calibrate-data", default=None,
              help="Data set whose test images calibrate the confidence (e.g. mnist, digits).")
@click.option("--data-dir", default=None, help="Directory of the calibration data set.")
@click.option("--calibration-size", type=int, default=500, show_default=True)
@click.option("--no-onnx", is_flag=True, help="Do not export per-copy ONNX files.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New directory for the seller record, C, T_0 and the copies.")
@seed_option
@json_option
@handle_errors
def separate_cmd(classifier_path: Path, num_copies: int, alpha: float, tau: float, tracer_kind: str,
                 length_scale: float, gain: float, calibrate_data: str | None, data_dir: str | None,
                 calibration_size: int, no_onnx: bool, out_dir: Path, seed: int, json_path: Path | None) -> None:
    """Make m traceable copies of a classifier and write the seller record.

    A 'vae' tracer is trained here for a short CPU schedule; use a tracer file for a longer one.

    \b
    Example:
      advforensics trace separate --classifier runs/zoo/lenet --copies 5 --alpha 0.15 \\
          --tracer random --calibrate-data mnist --data-dir /work/shared/data --out runs/copies --seed 0
    """
    from advforensics.models import load_model
    from advforensics.tracing.copies import CopyParams, CopySet
    from advforensics.tracing.dol import calibrate
    from advforensics.tracing.permutations import make_permutations
    from advforensics.tracing.record import separate
    from advforensics.tracing.tracer import create_tracer, load_tracer
    from advforensics.utils import seed_everything

    seed_everything(seed)
    classifier, card = load_model(classifier_path)
    classifier.eval()
    config = classifier.config
    size = tuple(config.image_size) if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    shape = dict(num_outputs=config.num_classes, in_channels=config.in_channels, image_size=size)
    if tracer_kind == "random":
        tracer = create_tracer("random", length_scale=length_scale, gain=gain, seed=seed, **shape)
    elif tracer_kind == "vae":
        tracer = _train_vae(shape, calibrate_data, data_dir, seed)
    else:
        tracer = load_tracer(tracer_kind)
    params = CopyParams(alpha=alpha, tau=tau)
    perms = make_permutations(int(config.num_classes), num_copies)
    calibration = None
    probe = None
    if calibrate_data is not None:
        images = _dataset_images(calibrate_data, data_dir, "test", calibration_size, seed)
        calibration = calibrate(CopySet(classifier, tracer, perms, params), images, seed=seed)
        probe = images[:64]
    record = separate(classifier, tracer, perms, params, out_dir, export=not no_onnx, calibration=calibration,
                      probe=probe, info={"classifier": str(classifier_path), "seed": seed})
    click.echo(f"wrote {len(record.copies)} copies ({record.tracer_kind} tracer, alpha {alpha}, tau {tau}) to {out_dir}")
    for entry in record.copies:
        click.echo(f"  copy {entry.index}: {entry.onnx_file or '(no onnx)'}  permutation {entry.permutation}")
    emit_json(json_path, {"out": str(out_dir), "copies": [e.__dict__ for e in record.copies],
                          "base_hash": record.base_hash, "tracer_hash": record.tracer_hash,
                          "calibrated": calibration is not None})


@trace.command("identify")
@click.option("--record", "record_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory written by `trace separate`.")
@click.option("--examples", "examples_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help=".npz with x_adv (N, C, H, W) float in [0, 1] (or a single array).")
@click.option("--show", type=int, default=20, show_default=True, help="Per-example rows printed.")
@seed_option
@json_option
@handle_errors
def identify_cmd(record_dir: Path, examples_path: Path, show: int, seed: int, json_path: Path | None) -> None:
    """Name the copy that adversarial examples were crafted on (per example and aggregated).

    \b
    Example:
      advforensics trace identify --record runs/copies --examples advs.npz --json trace.json
    """
    from advforensics.tracing.dol import Calibration, trace as trace_examples
    from advforensics.tracing.record import load_copies

    torch.manual_seed(seed)
    record, copies = load_copies(record_dir)
    x = load_examples(examples_path)
    calibration = Calibration.from_dict(record.calibration) if record.calibration else None
    report = trace_examples(copies, x, calibration)
    payload = report.to_dict()
    click.echo(f"{payload['num_examples']} examples, {payload['num_copies']} copies"
               + ("" if calibration else " (uncalibrated: no confidence)"))
    for b, row in enumerate(payload["per_example"][:show]):
        extra = f"  confidence {row['confidence']:.3f}  false-alarm {row['false_alarm_rate']:.3f}" if calibration else ""
        click.echo(f"  example {b}: copy {row['source']}  DOL {max(row['dol']):+.3f}  ranking {row['ranking']}{extra}")
    agg = payload["aggregate"]
    click.echo(f"aggregate: copy {agg['source']}  ranking {agg['ranking']}  sum DOL "
               + " ".join(f"{v:+.2f}" for v in agg["sum_dol"])
               + (f"  confidence {agg['confidence']:.4f}" if "confidence" in agg else ""))
    emit_json(json_path, payload)


def load_examples(path: Path) -> torch.Tensor:
    """x_adv rows of an .npz (only the successful ones where `attacks run` stored a success mask)."""
    return load_image_array(path)[0]


def _dataset_images(name: str, data_dir: str | None, split: str, limit: int, seed: int) -> torch.Tensor:
    from advforensics.data import load_dataset

    data = load_dataset(name, split, data_dir=data_dir)
    order = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(seed))[:limit]
    return data.images[order]


def _train_vae(shape: dict, data_name: str | None, data_dir: str | None, seed: int):  # type: ignore[no-untyped-def]
    from advforensics.tracing.tracer import create_tracer
    from advforensics.tracing.training import TraceTrainConfig, train_vae_tracer

    if data_name is None:
        raise InputValidationError("--tracer vae needs --calibrate-data (its images also train the tracer)")
    from advforensics.data import load_dataset

    images = load_dataset(data_name, "train", data_dir=data_dir, limit=5000).images
    tracer = create_tracer("vae", seed=seed, **shape)
    train_vae_tracer(tracer, images, TraceTrainConfig(epochs=1, seed=seed))
    return tracer


COMMANDS = [trace]
