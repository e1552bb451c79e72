"""`advforensics trace experiment`: the separate-and-trace tables, resumably."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand
from advforensics.cli.options import OutputDir, emit_json, json_option, seed_option
from advforensics.cli.params import comma_list, numbers, parse_param
from advforensics.errors import InputValidationError
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES, STAGES
from advforensics.vocab import LearnedFeatures

@click.command("experiment", cls=ForensicsCommand, ranks_ok=True)
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
@click.option("--learned-features", type=click.Choice(LearnedFeatures.values()), default="base", show_default=True,
              help="The learned rule's feature set (see `trace separate`).")
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
                   fit_images: int, learned_features: str, rule: str, tracer_file: Path | None, stages: str, raw_params: tuple[str, ...], out_dir: Path,
                   seed: int, json_path: Path | None) -> None:
    """Run the separate-and-trace tables (1, 2, 3, 5, 6, Fig. 4a/4b, controls, the peer scheme).

    Every attack set is cached under OUT/examples: rerunning the same command resumes.

    \b
    Example:
      advforensics trace experiment --classifier runs/tracing/lenet_mnist --data mnist \\
          --data-dir ../shared/data --per-source 45 --out runs/trace-exp --seed 0
    """
    import logging

    from advforensics.studies.tracing import TracingStudy, TracingStudyConfig
    from advforensics.utils import seed_everything

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    seed_everything(seed)
    overrides: dict[str, dict] = {}
    for text in raw_params:
        attack_name, _, rest = text.partition(".")
        if not rest:
            raise InputValidationError(f"--param expects ATTACK.KEY=VALUE, got {text!r}")
        key, value = parse_param(rest)
        overrides.setdefault(attack_name, {})[key] = value
    config = TracingStudyConfig(attacks=comma_list(attacks), alphas=numbers(alphas), clean_alphas=numbers(clean_alphas),
                                tau=tau, copies=num_copies, per_source=per_source,
                                copy_counts=numbers(copy_counts, int), scaling_attack=scaling_attack,
                                scaling_per_source=scaling_per_source, control_examples=control_examples,
                                calibration_images=calibration_images, fit_images=fit_images,
                                learned_features=learned_features, main_rule=rule,
                                tracer_file=None if tracer_file is None else str(tracer_file),
                                stages=comma_list(stages), attack_params=overrides, seed=seed)
    result = TracingStudy.from_files(classifier_path, data_name, config, out_dir, data_dir=data_dir).run()
    click.echo(result.report)
    click.echo(f"wrote {', '.join(str(f) for f in result.files[:2])} and {len(result.files) - 2} plots")
    emit_json(json_path, {"out": str(out_dir), "elapsed_s": result.elapsed_s})
