"""`advforensics attribution ...`: build an attack corpus, train/evaluate attributors, attribute images."""

from __future__ import annotations

import time
from pathlib import Path

import click

from advforensics.cli.common import ForensicsGroup
from advforensics.cli.options import OutputDir, device_option, emit_json, json_option, seed_option


@click.group("attribution", cls=ForensicsGroup)
def attribution() -> None:
    """Passive attribution (MTAA): which attack, victim and strength made an adversarial example.

    \b
    Example:
      advforensics attribution corpus --data mnist-5k --victims runs/zoo --grid small --out runs/corpus
      advforensics attribution train --corpus runs/corpus --out runs/mtaa.safetensors
      advforensics attribution evaluate --corpus runs/corpus --model runs/mtaa.safetensors --out runs/report
      advforensics attribution predict --model runs/mtaa.safetensors suspicious.png
    """


@attribution.command("corpus", ranks_ok=True)
@click.option("--data", "data_name", required=True, help="Data set name (see `data list`).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory holding the data set files.")
@click.option("--split", default="test", show_default=True, help="Data split whose images are attacked.")
@click.option("--limit", type=int, default=None, help="Attack only the first N images.")
@click.option("--start", type=int, default=0, show_default=True,
              help="Skip the split's first START images (held-out sets on images a corpus never saw).")
@click.option("--victims", required=True, help="Directory of zoo weights (*.safetensors + cards) or a comma list.")
@click.option("--grid", default="default", show_default=True,
              help="default (paper Table 1), small, field (each family's variants, issue 11), heldout (other "
                   "implementations and schedules), or a grid JSON file.")
@click.option("--clean-class/--no-clean-class", default=False, show_default=True,
              help="Add clean images as a false-alarm class.")
@click.option("--cw-kappa-scale", default=None,
              help="C&W kappa_scale: 'auto' (per victim, from its reachable margins) or a number. Default: auto "
                   "for the paper's grids (default, small), 1 (kappa in logits) for the others.")
@click.option("--cw-headroom", type=float, default=1.5, show_default=True,
              help="auto kappa_scale maps headroom x the largest kappa to the victim's 10th-percentile "
                   "reachable margin, so the largest kappa stays reachable by a short C&W schedule.")
@click.option("--float-evidence", is_flag=True, help="Store float evidence instead of 8-bit (leaks the attack).")
@click.option("--shard-images", type=int, default=256, show_default=True, help="Clean images per shard.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Attack batch size.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--out", required=True, type=OutputDir(managed=True), help="Corpus directory.")
@click.option("--resume", is_flag=True, help="Continue an interrupted corpus in OUT.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
@device_option
@seed_option
@json_option
def corpus_cmd(data_name: str, data_dir: Path | None, split: str, limit: int | None, start: int, victims: str,
               grid: str, clean_class: bool, cw_kappa_scale: str | None, cw_headroom: float, float_evidence: bool, shard_images: int,
               batch_size: int, threads: int, out: Path, resume: bool, progress: bool, device: str, seed: int,
               json_path: Path | None) -> None:
    """Attack a data set with every grid cell on every victim and store the successful examples.

    \b
    Example:
      advforensics attribution corpus --data mnist-5k --limit 500 --victims runs/zoo \\
          --grid small --out runs/corpus --json runs/corpus.json
      advforensics attribution corpus ... --out runs/corpus --resume   # after an interruption
    """
    import torch

    from advforensics.attribution.build import build_corpus

    torch.set_num_threads(max(1, threads))
    start_time = time.perf_counter()
    job = build_corpus(data_name, victims, grid, out, data_dir=data_dir, split=split, limit=limit, start=start,
                       clean_class=clean_class, cw_kappa_scale=cw_kappa_scale, cw_headroom=cw_headroom,
                       quantize=not float_evidence, shard_images=shard_images, batch_size=batch_size, seed=seed,
                       resume=resume, progress=progress, device=device)
    report, victim_params = job.report, job.victim_params
    seconds = time.perf_counter() - start_time
    click.echo(f"corpus {out}: {report.n_examples} examples in {report.units_total} units "
               f"({len(report.units_generated)} generated, {len(report.units_reused)} reused) in {seconds:.1f}s")
    for cell in report.cells:
        click.echo(f"  {cell['victim']:<14}{cell['variant']:<28}{cell['hyper']:>7g}  success "
                   f"{100 * cell['success_rate']:6.2f}% ({cell['succeeded']}/{cell['attempted']}), stored "
                   f"{cell['stored']}")
    for t in report.throughput:
        if t["images_per_s"]:
            click.echo(f"  throughput {t['victim']:<14}{t['attack']:<28}{t['images_per_s']:10.1f} attacked images/s")
    if report.empty_cells:
        click.echo(f"skipped {len(report.empty_cells)} empty grid cells (no successful example)", err=True)
    payload = report.to_dict()
    payload.update({"seconds": seconds, "seed": seed, "victim_params": victim_params})
    emit_json(json_path, payload)


def _register() -> None:
    from advforensics.cli.attribution_experiment import experiment_cmd
    from advforensics.cli.attribution_train import train_cmd
    from advforensics.cli.attribution_use import evaluate_cmd, predict_cmd

    for command in (train_cmd, evaluate_cmd, predict_cmd, experiment_cmd):
        attribution.add_command(command)


_register()
COMMANDS = [attribution]
