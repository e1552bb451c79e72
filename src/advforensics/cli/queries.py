"""`advforensics queries`: forensics on the log of `serve`: calibrate the detector on benign traffic,
fit the attack-family model on simulated attacks, and find (and name) attacks in progress."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsGroup
from advforensics.cli.options import OutputFile, emit_json, json_option, seed_option, seller_key_option

data_options = [
    click.option("--data", "data_name", required=True, help="The seller's own images (a data set name, e.g. mnist)."),
    click.option("--data-dir", default=None, help="Directory of the data set."),
    click.option("--split", default="train", show_default=True, help="Split the simulated buyers draw from."),
]


def with_data(command):
    for option in reversed(data_options):
        command = option(command)
    return command


@click.group("queries", cls=ForensicsGroup)
def queries() -> None:
    """Query forensics on a served copy's log: calibrate the detector, fit the family model, detect.

    \b
    Example:
      advforensics queries calibrate --data mnist --out runs/detector.json
      advforensics queries families --record runs/copies --data mnist --out runs/families.json
      advforensics queries detect --log runs/queries.sqlite --detector runs/detector.json \\
          --families runs/families.json
    """


@queries.command("calibrate")
@with_data
@click.option("--buyers", "n_buyers", type=int, default=1000, show_default=True, help="Simulated benign buyers.")
@click.option("--queries", "n_queries", type=int, default=1000, show_default=True, help="Queries per benign buyer.")
@click.option("--false-flag-rate", type=float, default=0.001, show_default=True,
              help="Share of benign buyers that may be flagged (in their first --queries queries).")
@click.option("--hits", "hits_to_flag", type=int, default=5, show_default=True, help="Hits that flag a buyer.")
@seed_option
@click.option("--out", "out_path", required=True, type=OutputFile(), help="The detector file (JSON) to write.")
def calibrate(data_name: str, data_dir: str | None, split: str, n_buyers: int, n_queries: int, false_flag_rate: float,
              hits_to_flag: int, seed: int, out_path: Path) -> None:
    """Set the detector's threshold on simulated benign buyers (the seller's images, augmented); no attack."""
    from advforensics.data import load_dataset
    from advforensics.errors import InputValidationError
    from advforensics.serving.detection import calibrate_on_images

    if not 0 < false_flag_rate < 0.5 or n_buyers < 1 or n_queries < 2:
        raise InputValidationError("need 0 < --false-flag-rate < 0.5, --buyers >= 1 and --queries >= 2")
    pool = load_dataset(data_name, split=split, data_dir=data_dir).images
    detector = calibrate_on_images(pool, buyers=n_buyers, queries=n_queries, false_flag_rate=false_flag_rate,
                                   seed=seed, hits_to_flag=hits_to_flag)
    detector.calibration.update(data=data_name, split=split)
    detector.save(out_path)
    click.echo(f"threshold {detector.config.threshold:.4f} (k {detector.config.k}, {hits_to_flag} hits flag a buyer) "
               f"from {n_buyers} x {n_queries} benign queries -> {out_path}")


@queries.command("families")
@click.option("--record", "record_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The seller record whose copy the simulated attacks query.")
@click.option("--copy", "copy_index", type=int, default=0, show_default=True, help="The copy attacked.")
@seller_key_option
@with_data
@click.option("--per-family", type=int, default=40, show_default=True, help="Simulated sequences per family.")
@click.option("--min-confidence", type=float, default=0.5, show_default=True,
              help="Below this probability the family is 'unknown'.")
@seed_option
@click.option("--out", "out_path", required=True, type=OutputFile(), help="The family model file (JSON) to write.")
def families(record_dir: Path, copy_index: int, seller_key: Path | None, data_name: str, data_dir: str | None,
             split: str, per_family: int, min_confidence: float, seed: int, out_path: Path) -> None:
    """Fit the attack-family model on the seller's own simulated attacks (and benign buyers) on a copy."""
    from advforensics.data import load_dataset
    from advforensics.errors import InputValidationError
    from advforensics.serving.simulate import fit_family_model
    from advforensics.tracing.record import load_copies

    if per_family < 2 or not 0 < min_confidence < 1:
        raise InputValidationError("need --per-family >= 2 and 0 < --min-confidence < 1")
    _, copies = load_copies(record_dir, public_key=seller_key)
    data = load_dataset(data_name, split=split, data_dir=data_dir)
    model = fit_family_model(copies.copy(copy_index), data.images, data.labels, per_family=per_family, seed=seed,
                             min_confidence=min_confidence)
    model.info.update(data=data_name, split=split, copy=copy_index)
    model.save(out_path)
    click.echo(f"families {', '.join(model.families)} from {per_family} simulated sequences each -> {out_path}")


@queries.command("detect")
@click.option("--log", "log_target", required=True, help="The query log of `serve` (a SQLite file or database URL).")
@click.option("--detector", "detector_path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The detector file of `queries calibrate`.")
@click.option("--families", "families_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The family model of `queries families`: name each flagged buyer's attack.")
@json_option
def detect(log_target: str, detector_path: Path, families_path: Path | None, json_path: Path | None) -> None:
    """Per buyer: queries, hits, whether (and at which query) an attack in progress was flagged, and its family."""
    from advforensics.serving.forensics import examine_log

    findings = examine_log(log_target, detector_path, families_path)
    click.echo(findings.markdown_table())
    emit_json(json_path, findings.to_dict())


COMMANDS = [queries]
