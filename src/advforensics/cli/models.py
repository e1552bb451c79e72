"""`advforensics models ...`: list the zoo, train a model on a data set, evaluate saved weights."""

from __future__ import annotations

import json
from pathlib import Path

import click

from advforensics import __version__
from advforensics.cli.boundary import UserError
from advforensics.cli.common import ForensicsGroup
from advforensics.cli.options import OutputFile, emit_json, json_option, seed_option


@click.group("models", cls=ForensicsGroup)
def models() -> None:
    """The classifier zoo: list, train, evaluate.

    \b
    Example:
      advforensics models list
      advforensics models train --model lenet --data digits --epochs 2 --out runs/lenet-digits
      advforensics models eval --weights runs/lenet-digits --data digits
    """


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_cmd(as_json: bool) -> None:
    """List the registered models with default width, training defaults and parameter count
    (for 1x28x28 inputs, 10 classes).

    \b
    Example:
      advforensics models list
    """
    from advforensics.models import MODELS, count_parameters, create_model, default_train_config

    rows = []
    for name in MODELS.names():
        spec = MODELS.get(name)
        train = default_train_config(name)
        rows.append({"name": name, "description": spec.description, "default_width": spec.default_width,
                     "params_28x28x1": count_parameters(create_model(name, seed=0)),
                     "epochs": train.epochs, "lr": train.lr, "batch_size": train.batch_size})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<14}{'width':>7}{'params':>11}{'epochs':>8}{'lr':>9}  description")
    for r in rows:
        click.echo(f"{r['name']:<14}{r['default_width']:>7g}{r['params_28x28x1']:>11,}{r['epochs']:>8}"
                   f"{r['lr']:>9g}  {r['description']}")


@models.command("train", ranks_ok=True)
@click.option("--model", "model_name", required=True, help="Zoo model name (see `models list`).")
@click.option("--data", "data_name", required=True, help="Data set name (see `data list`).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory holding the data set files.")
@click.option("--epochs", type=int, default=None, help="Epochs [model default].")
@click.option("--batch-size", type=int, default=None, help="Batch size [model default].")
@click.option("--lr", type=float, default=None, help="Peak learning rate [model default].")
@click.option("--width", type=float, default=None, help="Width multiplier [model default].")
@click.option("--shift", type=int, default=None,
              help="Random-shift augmentation: +-SHIFT px per training image [model default].")
@click.option("--flip/--no-flip", default=None,
              help="Random left-right mirror augmentation (for natural images) [model default: off].")
@click.option("--stage1-px", type=int, default=0,
              help="ResNets: resolution of the first stage (32: CIFAR-10 at full resolution) [0: ~16 px].")
@click.option("--limit", type=int, default=None, help="Use only the first N training images.")
@click.option("--threads", type=int, default=None, help="torch CPU threads [torch default].")
@click.option("--out", required=True, type=OutputFile(card_copy=True),
              help="Output base path: writes OUT.safetensors and OUT.json (card).")
@click.option("--resume", is_flag=True, help="Resume from OUT.train-state.* if present.")
@click.option("--overwrite", is_flag=True, help="Replace a different model already at OUT.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@seed_option
@json_option
def train_cmd(model_name: str, data_name: str, data_dir: Path | None, epochs: int | None,
              batch_size: int | None, lr: float | None, width: float | None, shift: int | None,
              flip: bool | None, stage1_px: int, limit: int | None,
              threads: int | None, out: Path, resume: bool, overwrite: bool, progress: bool, seed: int,
              json_path: Path | None) -> None:
    """Train a zoo model and save weights + card; the test split is evaluated after every epoch.

    A training state is written after each epoch to OUT.train-state.safetensors;
    with --resume an interrupted run continues from it and ends with the same weights.

    \b
    Example:
      advforensics models train --model resnet18 --data mnist --data-dir ../shared/data \\
          --out runs/zoo/resnet18 --json runs/zoo/resnet18.train.json
      advforensics models train --model lenet --data digits --epochs 3 --out runs/lenet --resume
    """
    import torch

    from advforensics.models import count_parameters, read_card
    from advforensics.models.zoo_training import train_zoo_model

    if threads is not None:
        if threads < 1:
            raise UserError("--threads must be >= 1")
        torch.set_num_threads(threads)
    run = train_zoo_model(model_name, data_name, out, data_dir=data_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                          width=width, shift=shift, flip=flip, limit=limit, stage1_px=stage1_px, resume=resume, overwrite=overwrite,
                          progress=progress, seed=seed)
    model, config, result, weights_path = run.model, run.config, run.result, run.weights_path
    payload = {"model": model_name, "width": model.config.width, "data": run.card["dataset"]["name"],
               "params": count_parameters(model), "epochs": config.epochs, "shift": config.shift, "flip": config.flip,
               "seed": seed, "revision": model.config.revision, "stage1_px": model.config.stage1_px,
               "test_accuracy": result.test_accuracy, "train_seconds": result.train_seconds,
               "train_cpu_seconds": result.cpu_seconds, "wall_seconds_this_session": run.wall_seconds,
               "resumed_from_epoch": result.resumed_from_epoch, "threads": torch.get_num_threads(),
               "weights": str(weights_path), "weights_sha256": read_card(weights_path)["weights_sha256"],
               "advforensics_version": __version__}
    click.echo(f"{model_name} on {payload['data']}: test accuracy {result.test_accuracy:.4f} after "
               f"{config.epochs} epochs, {result.train_seconds:.0f} s training -> {weights_path}")
    emit_json(json_path, payload)


@models.command("eval")
@click.option("--weights", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Base path (or .safetensors file) written by `models train`.")
@click.option("--data", "data_name", required=True, help="Data set name.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory holding the data set files.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N images.")
@click.option("--batch-size", type=int, default=512, show_default=True)
@seed_option
@json_option
def eval_cmd(weights: Path, data_name: str, data_dir: Path | None, split: str, limit: int | None,
             batch_size: int, seed: int, json_path: Path | None) -> None:
    """Check a saved model's hash and architecture, then measure its accuracy on a data split.

    \b
    Example:
      advforensics models eval --weights runs/zoo/resnet18 --data mnist --data-dir ../shared/data
    """
    import torch

    from advforensics.data import load_dataset
    from advforensics.errors import InputValidationError
    from advforensics.models import evaluate, load_model

    torch.manual_seed(seed)  # evaluation is deterministic; seeded for uniformity
    model, card = load_model(weights)
    data = load_dataset(data_name, split=split, data_dir=data_dir, limit=limit)
    cfg = model.config
    if tuple(data.info.shape) != (cfg.in_channels, cfg.image_size, cfg.image_size):
        raise InputValidationError(f"{data_name} images are {tuple(data.info.shape)}, the model expects "
                                   f"{(cfg.in_channels, cfg.image_size, cfg.image_size)}")
    accuracy = evaluate(model, data.images, data.labels, batch_size=batch_size)
    click.echo(f"{cfg.name} on {data.info.name}/{split} ({len(data.labels)} images): accuracy {accuracy:.4f}")
    emit_json(json_path, {"model": cfg.name, "weights_sha256": card["weights_sha256"], "data": data.info.name,
                          "split": split, "n": len(data.labels), "accuracy": accuracy, "seed": seed})


COMMANDS = [models]
