"""`advforensics attacks ...`: list the registered attacks, run one on a saved model and a data set."""

from __future__ import annotations

import json
import logging
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from advforensics.cli.boundary import UserError
from advforensics.cli.common import ForensicsGroup
from advforensics.cli.options import OutputFile, emit_json, json_option, seed_option
from advforensics.cli.params import attack_arguments, parse_param

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("advforensics.cli.attacks")


@click.group("attacks", cls=ForensicsGroup)
def attacks() -> None:
    """The attack registry: list attacks, run one against a saved model.

    \b
    Example:
      advforensics attacks list
      advforensics attacks run --attack pgd-linf --weights runs/lenet-digits.safetensors --data digits \\
          --param eps=8/255 --param steps=20 --n 100 --out advs.npz
    """


@attacks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_cmd(as_json: bool) -> None:
    """List every registered attack: name, norm, threat model, parameters with defaults.

    \b
    Example:
      advforensics attacks list
    """
    from advforensics.attacks import ATTACKS, list_attacks

    rows = [{"name": name, "norm": ATTACKS.get(name).norm.value,
             "threat_model": ATTACKS.get(name).threat_model.value, "params": attack_arguments(name)}
            for name in list_attacks()]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    click.echo(f"{'name':<14}{'norm':<6}{'threat model':<14}parameters (defaults)")
    for row in rows:
        params = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        click.echo(f"{row['name']:<14}{row['norm']:<6}{row['threat_model']:<14}{params}")


@attacks.command("run", ranks_ok=True)
@click.option("--attack", "attack_name", required=True, help="Attack name (see `attacks list`).")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Saved model (MODEL.safetensors with its MODEL.json card).")
@click.option("--copies", "copies_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Instead of --weights: a seller record from `trace separate`; attack copy --copy of it.")
@click.option("--copy", "copy_index", type=click.IntRange(min=0), default=None,
              help="With --copies: index of the copy the attacker holds.")
@click.option("--data", "data_name", required=True, help="Data set name (see `data list`).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the data set's files are.")
@click.option("--split", default="test", show_default=True, help="Data split to attack.")
@click.option("--n", "n_examples", type=click.IntRange(min=1), default=100, show_default=True,
              help="Attack the first N correctly classified examples.")
@click.option("--param", "raw_params", multiple=True, metavar="KEY=VALUE",
              help="Attack parameter, repeatable (eps=8/255, steps=20, random_start=false).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True,
              help="Examples per attack call.")
@click.option("--out", type=OutputFile(), default=None,
              help="Write x_adv, labels, predicted, success, norms, queries as .npz.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads [torch default].")
@seed_option
@json_option
def run_cmd(attack_name: str, weights: Path | None, copies_dir: Path | None, copy_index: int | None, data_name: str, data_dir: Path | None, split: str, n_examples: int,
            raw_params: tuple[str, ...], batch_size: int, out: Path | None, overwrite: bool, threads: int | None, seed: int,
            json_path: Path | None) -> None:
    """Attack the first N correctly classified examples of a data split and report the figures.

    --seed seeds everything and is passed to attacks that take a `seed` parameter (unless --param
    seed=... is given). Budgets are in [0, 1] pixel units: write eps=8/255, not eps=8.

    \b
    With --copies/--copy the target is one traceable model copy (a hard-label black box); the
    figures then also say how often the examples fool the shared classifier C alone.

    \b
    Example:
      advforensics attacks run --attack fgsm --weights runs/lenet-digits.safetensors --data digits \\
          --param eps=0.1 --n 100 --out runs/fgsm.npz --json runs/fgsm.json
      advforensics attacks run --attack hopskipjump --copies runs/copies --copy 3 --data mnist-5k \\
          --param max_iter=20 --n 20 --out runs/advs.npz
    """
    import torch

    from advforensics.attacks import create_attack
    from advforensics.attacks.base import ThreatModel, batched_predict
    from advforensics import distributed
    from advforensics.attacks.campaign import run_campaign
    from advforensics.data import load_dataset
    from advforensics.utils import seed_everything

    params = dict(parse_param(text) for text in raw_params)
    if "seed" in attack_arguments(attack_name) and "seed" not in params:
        params["seed"] = seed
    attack = create_attack(attack_name, **params)  # bad names/parameters fail before any work
    if copies_dir is not None and attack.threat_model is ThreatModel.WHITE_BOX:
        logger.warning("%s is a white-box attack: it reads the copy's gradients, which a buyer of its hard-label "
                       "endpoint never sees (the ONNX copy answers labels only)", attack_name)
    if threads is not None:
        torch.set_num_threads(threads)
    seed_everything(seed)
    model, classifier, provenance = _load_target(weights, copies_dir, copy_index)
    dataset = load_dataset(data_name, split=split, data_dir=data_dir)
    config = getattr(classifier if classifier is not None else model, "config", None)
    shape = None if config is None else (config.in_channels, config.image_size, config.image_size)
    campaign = run_campaign(attack, model, dataset.images, dataset.labels, n_examples, batch_size, shape)
    if classifier is not None:  # does the example also fool C alone (and so transfer to other copies)?
        campaign.extras["classifier_fooled"] = batched_predict(classifier, campaign.x_adv) != campaign.labels
    summary = {"attack": attack.params, **provenance, "data": data_name, "split": split,
               "data_sha256": dataset.info.sha256, "seed": seed, **campaign.figures(),
               "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
                          f"{torch.get_num_threads()} threads"}
    if out is not None:
        meta = {key: summary[key] for key in ("attack", *provenance, "data", "split", "data_sha256", "seed")}
        if distributed.current().is_main:  # under torchrun every rank holds the whole campaign; one writes it
            campaign.save(out, attack.params, meta, overwrite=overwrite)
        summary["out"] = str(out)
    _print_figures(f"{attack_name} on {data_name}/{split}", summary)
    emit_json(json_path, summary)


def _print_figures(title: str, summary: dict[str, Any]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    click.echo(f"{title}: {summary['n']} correctly classified examples")
    click.echo(f"  success rate     {summary['success_rate']:.1%}")
    click.echo(f"  median L2        {fmt(summary['median_l2_success'], '.4f')} (successful examples)")
    click.echo(f"  median Linf      {fmt(summary['median_linf_success'], '.4f')} (successful examples)")
    click.echo(f"  mean queries     {summary['mean_queries']:.1f}")
    if "reached_rate" in summary:
        click.echo(f"  kappa reached    {summary['reached_rate']:.1%}")
    if summary.get("classifier_fooled_rate_success") is not None:
        click.echo(f"  C alone fooled   {summary['classifier_fooled_rate_success']:.1%} (successful examples)")
    click.echo(f"  time             {summary['seconds']:.2f} s ({fmt(summary['images_per_second'], '.1f')} images/s)")
    if "out" in summary:
        click.echo(f"  wrote            {summary['out']}")


def _load_target(weights: Path | None, copies_dir: Path | None, copy_index: int | None
                 ) -> tuple[torch.nn.Module, torch.nn.Module | None, dict[str, Any]]:
    """The attacked model, the shared classifier C when it is a traceable copy, and provenance."""
    if (weights is None) == (copies_dir is None):
        raise UserError("give exactly one of --weights MODEL and --copies RECORD_DIR")
    if weights is not None:
        if copy_index is not None:
            raise UserError("--copy needs --copies RECORD_DIR")
        from advforensics.models import load_model

        model, card = load_model(weights)
        return model, None, {"weights": str(weights), "weights_sha256": card.get("weights_sha256")}
    if copy_index is None:
        raise UserError("--copies needs --copy INDEX (the copy the attacker holds)")
    from advforensics.tracing.record import load_copies

    # the seller simulating an attacker on its own copies: hashes checked, authentication is identify's concern
    record, copies = load_copies(copies_dir, warn=False)
    if copy_index >= copies.num_copies:
        raise UserError(f"--copy {copy_index} out of range: the record holds {copies.num_copies} copies")
    provenance = {"copies": str(copies_dir), "copy": copy_index, "base_hash": record.base_hash,
                  "copy_hash": record.copies[copy_index].copy_hash}
    return copies.copy(copy_index), copies.classifier, provenance


COMMANDS = [attacks]
