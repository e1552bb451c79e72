"""`advforensics attribution experiment`: the MTAA paper's tables (corpus, models, baselines, controls), resumably."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand
from advforensics.cli.options import OutputDir, device_option, emit_json, json_option, seed_option
from advforensics.cli.params import comma_list
from advforensics.vocab import AttributionStage

STAGES = AttributionStage.values()
DEFAULT_MODELS = "mtaa,st-attack,st-victim,st-hyper,single-label,control"


@click.command("experiment", cls=ForensicsCommand)
@click.option("--victims", required=True, help="Directory of zoo weights (*.safetensors + cards) or a comma list.")
@click.option("--data", "data_name", default="mnist-5k", show_default=True, help="Data set whose split is attacked.")
@click.option("--data-dir", default=None, help="Directory holding the data set files.")
@click.option("--split", default="test", show_default=True)
@click.option("--limit", type=int, default=300, show_default=True, help="Clean images attacked.")
@click.option("--grid", default="small", show_default=True, help="Grid name (see `attribution corpus`) or JSON file.")
@click.option("--clean-class", is_flag=True, help="Add clean images as a false-alarm class.")
@click.option("--shard-images", type=int, default=50, show_default=True, help="Clean images per corpus unit.")
@click.option("--models", default=DEFAULT_MODELS, show_default=True,
              help="Model variants, comma-separated: mtaa, st-attack, st-victim, st-hyper, single-label, "
                   "single-label-av, no-pe, no-tsl, plain-sum, control, mtaa-balanced; +fx / +fxa adds the side "
                   "features; @2x3 trains on the scalability subset.")
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--width", type=int, default=8, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Cap each model's optimiser steps (quick runs).")
@click.option("--backbone-data", default=None, help="Pretrain MTAA's PE backbone on this data set's train split.")
@click.option("--probe-victims", default=None,
              help="Victim weights for +fx models (directory or comma list; default: the corpus's victims).")
@click.option("--stages", default=",".join(STAGES), show_default=True, help="Stages to run, comma-separated.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--out", "out_dir", required=True, type=OutputDir(),
              help="Directory for the corpus, models, metrics, results.json and tables.md (resumable).")
@device_option
@seed_option
@json_option
def experiment_cmd(victims: str, data_name: str, data_dir: str | None, split: str, limit: int, grid: str,
                   clean_class: bool, shard_images: int, models: str, epochs: int, width: int, batch_size: int,
                   max_steps: int | None, backbone_data: str | None, probe_victims: str | None, stages: str,
                   threads: int, out_dir: Path, device: str, seed: int, json_path: Path | None) -> None:
    """Run the attribution study: corpus, every model variant trained and evaluated, the tables.

    A corpus unit or a model already under OUT is reused: rerunning the same command resumes.

    \b
    Example:
      advforensics attribution experiment --victims runs/zoo --data mnist-5k --limit 300 --grid small \\
          --models mtaa,st-attack,st-victim,st-hyper,control --out runs/attribution-exp --seed 0
    """
    import logging

    import torch

    from advforensics.studies.attribution import AttributionStudy, AttributionStudyConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    torch.set_num_threads(max(1, threads))
    config = AttributionStudyConfig(victims=victims, data=data_name, data_dir=data_dir, split=split, limit=limit,
                                    grid=grid, clean_class=clean_class, shard_images=shard_images,
                                    models=comma_list(models) or [], epochs=epochs, width=width, batch_size=batch_size,
                                    max_steps=max_steps, backbone_data=backbone_data, probe_victims=probe_victims,
                                    device=device, stages=comma_list(stages) or [], seed=seed)
    result = AttributionStudy(config, out_dir).run()
    click.echo(result.report)
    click.echo(f"wrote {', '.join(str(f) for f in result.files)}")
    emit_json(json_path, {"out": str(out_dir), "elapsed_s": result.elapsed_s})
