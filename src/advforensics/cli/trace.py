"""`advforensics trace`: separate a classifier into traceable copies, and trace adversarial examples."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from advforensics.cli.common import ForensicsGroup
from advforensics.cli.options import OutputDir, OutputFile, emit_json, json_option, seed_option
from advforensics.errors import InputValidationError
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES
from advforensics.vocab import LearnedFeatures

if TYPE_CHECKING:
    import torch


@click.group("trace", cls=ForensicsGroup)
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
              help="Data set of the seller's own images (e.g. mnist, digits): its test split calibrates the "
                   "formula rules, its train split fits the learned rule.")
@click.option("--data-dir", default=None, help="Directory of the calibration data set.")
@click.option("--calibration-size", type=int, default=500, show_default=True)
@click.option("--fit-size", type=int, default=6000, show_default=True,
              help="Train images on which attackers are simulated to fit the learned rule (0: no learned rule).")
@click.option("--learned-features", type=click.Choice(LearnedFeatures.values()), default="base", show_default=True,
              help="squeezed: the learned rule also reads C's label on the contrast-stretched example (traces "
                   "examples pushed past every copy better; one more pass of C per example).")
@click.option("--rule", type=click.Choice(FORMULA_RULES), default=DEFAULT_RULE, show_default=True,
              help="Main formula rule (every formula rule is calibrated; the learned rule, when fitted, "
                   "is the record's default).")
@click.option("--no-onnx", is_flag=True, help="Do not export per-copy ONNX files.")
@click.option("--out", "out_dir", required=True, type=OutputDir(),
              help="New directory for the seller record, C, T_0 and the copies.")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Sign the new record with this private key (`trace keygen`); investigators verify it with "
                   "`identify --seller-key KEY.pub`.")
@seed_option
@json_option
def separate_cmd(classifier_path: Path, num_copies: int, alpha: float, tau: float, tracer_kind: str,
                 length_scale: float, gain: float, calibrate_data: str | None, data_dir: str | None,
                 calibration_size: int, fit_size: int, learned_features: str, rule: str, no_onnx: bool, out_dir: Path,
                 signing_key: Path | None, seed: int, json_path: Path | None) -> None:
    """Make m traceable copies of a classifier and write the seller record.

    With --calibrate-data the seller also simulates attackers on its own copies (minimal, overshooting
    and transfer-seeking examples, saved as PNG/JPEG or noised, plus controls) and fits the learned
    rule, which answers "none of these copies" too. A 'vae' tracer is trained here for a short CPU
    schedule; use a tracer file for a longer one.

    \b
    Example:
      advforensics trace separate --classifier runs/zoo/lenet --copies 5 --alpha 0.15 \\
          --tracer random --calibrate-data mnist --data-dir ../shared/data --out runs/copies --seed 0 \\
          --signing-key keys/seller
    """
    from advforensics.models import load_model
    from advforensics.tracing.api import make_copies
    from advforensics.tracing.permutations import max_copies, tracer_blocks
    from advforensics.tracing.signing import fingerprint, load_private_key
    from advforensics.tracing.tracer import create_tracer, load_tracer
    from advforensics.utils import seed_everything

    seed_everything(seed)
    if (out_dir / "record.json").exists():
        raise InputValidationError(f"{out_dir} already holds a seller record; choose a new directory")
    key = load_private_key(signing_key) if signing_key is not None else None  # a bad key fails before the work
    classifier, _ = load_model(classifier_path)
    classifier.eval()
    config = classifier.config
    size = tuple(config.image_size) if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    shape = dict(num_outputs=config.num_classes, in_channels=config.in_channels, image_size=size)
    blocks = tracer_blocks(int(config.num_classes), num_copies) if num_copies >= 1 else 1
    if tracer_kind == "vae" and blocks > 1:  # refused before the training, not after it
        raise InputValidationError(f"the VAE tracer has {config.num_classes} outputs, enough for "
                                   f"{max_copies(int(config.num_classes))} copies; use --tracer random for more")
    if tracer_kind == "random":  # one block of K outputs per max_copies(K) copies
        tracer = create_tracer("random", length_scale=length_scale, gain=gain, seed=seed,
                               **dict(shape, num_outputs=config.num_classes * blocks))
    elif tracer_kind == "vae":
        tracer = _train_vae(shape, calibrate_data, data_dir, seed)
    else:
        tracer = load_tracer(tracer_kind)
    calibration_images = fit = None
    if calibrate_data is not None:
        calibration_images = _dataset_images(calibrate_data, data_dir, "test", calibration_size, seed)[0]
        if fit_size > 0:
            fit = _dataset_images(calibrate_data, data_dir, "train", fit_size, seed)
    record = make_copies(classifier, out_dir, copies=num_copies, alpha=alpha, tau=tau, tracer=tracer,
                         calibration_images=calibration_images, fit_images=fit, rule=rule, export=not no_onnx,
                         seed=seed, info={"classifier": str(classifier_path)}, signing_key=signing_key,
                         learned_features=learned_features)
    signer = fingerprint(key.public_key()) if key is not None else None  # make_copies signed the record
    click.echo(f"wrote {len(record.copies)} copies ({record.tracer_kind} tracer, alpha {alpha}, tau {tau}) to {out_dir}")
    for entry in record.copies:
        click.echo(f"  copy {entry.index}: {entry.onnx_file or '(no onnx)'}  permutation {entry.permutation}")
    click.echo(f"default rule: {record.default_rule}"
               + (" (fitted on simulated attackers)" if record.learned else ""))
    click.echo(f"signed by key {signer[:16]} (record.sig)" if signer else
               "unsigned: pass --signing-key (or run `trace sign`) so that investigators can verify the record")
    emit_json(json_path, {"out": str(out_dir), "copies": [e.__dict__ for e in record.copies],
                          "base_hash": record.base_hash, "tracer_hash": record.tracer_hash,
                          "calibrated": record.calibration is not None, "rule": rule,
                          "default_rule": record.default_rule, "signing_key_sha256": signer})


@trace.command("keygen")
@click.option("--out", "key_path", required=True, type=OutputFile(replaceable=False),
              help="The private key file to write (mode 0600); the public key goes beside it as PATH.pub. "
                   "Existing files are never replaced.")
def keygen_cmd(key_path: Path) -> None:
    """Make the seller's Ed25519 signing key pair: PATH (private: keep it secret) and PATH.pub (public:
    give it to investigators, who pass it to `identify --seller-key`).

    \b
    Example:
      advforensics trace keygen --out keys/seller      # writes keys/seller and keys/seller.pub
      advforensics trace sign --record runs/copies --signing-key keys/seller
    """
    from advforensics.tracing.signing import generate_keypair

    private, public, fingerprint = generate_keypair(key_path)
    click.echo(f"wrote private key {private} (mode 0600; keep it secret) and public key {public}")
    click.echo(f"key fingerprint {fingerprint}")


@trace.command("sign")
@click.option("--record", "record_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory written by `trace separate`.")
@click.option("--signing-key", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The seller's private key (`trace keygen`).")
@click.option("--overwrite", is_flag=True, help="Replace an existing record.sig.")
def sign_cmd(record_dir: Path, signing_key: Path, overwrite: bool) -> None:
    """Sign an existing (e.g. older, unsigned) seller record: record.sig over record.json, written
    only after every hash in the record checks out (C, the tracer, the ONNX copies present).

    \b
    Example:
      advforensics trace sign --record runs/copies --signing-key keys/seller
      advforensics trace identify --record runs/copies --examples advs.npz --seller-key keys/seller.pub
    """
    from advforensics.tracing.record import sign_existing_record

    fingerprint = sign_existing_record(record_dir, signing_key, overwrite=overwrite)
    click.echo(f"signed {record_dir / 'record.json'} with key {fingerprint[:16]} ({record_dir / 'record.sig'})")


def _dataset_images(name: str, data_dir: str | None, split: str, limit: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    from advforensics.data import load_dataset

    data = load_dataset(name, split, data_dir=data_dir)
    order = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(seed))[:limit]
    return data.images[order], data.labels[order]


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




def _register() -> None:
    from advforensics.cli.trace_experiment import experiment_cmd
    from advforensics.cli.trace_identify import identify_cmd

    trace.add_command(identify_cmd)
    trace.add_command(experiment_cmd)


_register()
COMMANDS = [trace]
