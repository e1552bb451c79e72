"""`advforensics trace experiment`: the separate-and-trace tables, resumably."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand, OutputDir, emit_json, json_option, seed_option
from advforensics.cli.params import numbers, parse_param
from advforensics.errors import InputValidationError
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES, STAGES

@click.command("experiment", cls=ForensicsCommand)
@click.option("--classifier", "classifier_path", required=True, type=click.Path(path_type=Path),
              help="Zoo checkpoint of C.")
@click.option("--data", "data_name", default="mnist", show_default=True,
              help="Data set: its test split is attacked, its train split calibrates.")
@click.option("--data-dir", default=None, help="Directory of the data set.")
@click.option("--attacks", default="hopskipjump,boundary", show_default=True,
              help="Hard-label attacks, comma-separated (boundary, hopskipjump, qeba, surfree, signopt).")
@click.option("--alphas", default="0.15", show_default=True, help="Tracer weights for Table 2.")
@click.option("--clean-alphas", default="0.05,0.1,0.15,0.2", show_default=True, help="Tracer weights for Table 1.")
@click.option("--tau", type=float, default=2.0, show_default=True)
@click.option("--copies", "num_copies", type=int, default=5, show_default=True)
@click.option("--per-source", type=int, default=45, show_default=True, help="Images attacked per copy (Table 2).")
@click.option("--copy-counts", default="2,5,10,15,20", show_default=True, help="Copy counts for Fig. 4b.")
@click.option("--scaling-attack", default="hopskipjump", show_default=True)
@click.option("--scaling-per-source", type=int, default=10, show_default=True,
              help="Images attacked per copy for Fig. 4b.")
@click.option("--control-examples", type=int, default=45, show_default=True,
              help="Images attacked per control (another tracer; C alone).")
@click.option("--calibration-images", type=int, default=200, show_default=True)
@click.option("--fit-images", type=int, default=3000, show_default=True,
              help="Train images on which the field stage simulates attackers and fits the learned rule.")
@click.option("--rule", type=click.Choice(FORMULA_RULES), default=DEFAULT_RULE, show_default=True,
              help="Main score rule (every rule is reported).")
@click.option("--tracer", "tracer_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="A saved tracer .safetensors (e.g. the tracer.safetensors of a `trace separate --tracer vae` "
                   "record); default: the smooth random tracer.")
@click.option("--stages", default=",".join(STAGES), show_default=True,
              help="Stages to run, comma-separated.")
@click.option("--param", "raw_params", multiple=True, metavar="ATTACK.KEY=VALUE",
              help="Override an attack's budget, e.g. hopskipjump.max_iter=50 (repeatable).")
@click.option("--out", "out_dir", required=True, type=OutputDir(),
              help="Directory for results.json, tables.md, plots/ and the cached examples (resumable).")
@seed_option
@json_option
def experiment_cmd(classifier_path: Path, data_name: str, data_dir: str | None, attacks: str, alphas: str,
                   clean_alphas: str, tau: float, num_copies: int, per_source: int, copy_counts: str,
                   scaling_attack: str, scaling_per_source: int, control_examples: int, calibration_images: int,
                   fit_images: int, rule: str, tracer_file: Path | None, stages: str, raw_params: tuple[str, ...], out_dir: Path,
                   seed: int, json_path: Path | None) -> None:
    """Run the separate-and-trace tables (1, 2, 3, 5, 6, Fig. 4a/4b, controls, the peer scheme).

    Every attack set is cached under OUT/examples: rerunning the same command resumes.

    \b
    Example:
      advforensics trace experiment --classifier runs/tracing/lenet_mnist --data mnist \\
          --data-dir ../shared/data --per-source 45 --out runs/trace-exp --seed 0
    """
    import logging

    import torch

    from advforensics.data import load_dataset
    from advforensics.models import load_model
    from advforensics.tracing.experiment import ExperimentConfig, TracingExperiment
    from advforensics.tracing.experiment_report import markdown_report, write_plots
    from advforensics.utils import atomic_write_text
    from advforensics.utils import seed_everything

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    seed_everything(seed)
    attack_names = [a.strip() for a in attacks.split(",") if a.strip()]
    overrides: dict[str, dict] = {}
    for text in raw_params:
        attack_name, _, rest = text.partition(".")
        if not rest:
            raise InputValidationError(f"--param expects ATTACK.KEY=VALUE, got {text!r}")
        key, value = parse_param(rest)
        overrides.setdefault(attack_name, {})[key] = value
    config = ExperimentConfig(attacks=attack_names, alphas=numbers(alphas), clean_alphas=numbers(clean_alphas),
                              tau=tau, copies=num_copies, per_source=per_source, copy_counts=numbers(copy_counts, int),
                              scaling_attack=scaling_attack, scaling_per_source=scaling_per_source,
                              control_examples=control_examples, calibration_images=calibration_images,
                              fit_images=fit_images, main_rule=rule, tracer_file=None if tracer_file is None else str(tracer_file),
                              stages=[v.strip() for v in stages.split(",") if v.strip()],
                              attack_params=overrides, seed=seed)
    config.check_attacks()  # before any model or data loads
    classifier, _ = load_model(classifier_path)
    test = load_dataset(data_name, "test", data_dir=data_dir)
    train = load_dataset(data_name, "train", data_dir=data_dir)
    order = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(seed))
    experiment = TracingExperiment(classifier, test.images, test.labels, train.images[order[:calibration_images]],
                                   config, out_dir, info={"classifier": str(classifier_path), "data": data_name},
                                   train_data=(train.images[order], train.labels[order]))
    results = experiment.run()
    report = markdown_report(results)
    atomic_write_text(out_dir / "tables.md", report)
    plots = write_plots(results, out_dir / "plots")
    click.echo(report)
    click.echo(f"wrote {out_dir / 'results.json'}, {out_dir / 'tables.md'} and {len(plots)} plots")
    emit_json(json_path, {"out": str(out_dir), "elapsed_s": results["elapsed_s"]})
