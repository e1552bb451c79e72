"""`advforensics trace`: separate a classifier into traceable copies, and trace adversarial examples."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from advforensics.cli.common import ForensicsGroup, OutputDir, OutputFile, emit_json, json_option, seed_option
from advforensics.errors import InputValidationError
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES, SCORE_RULES, STAGES

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
                 calibration_size: int, fit_size: int, rule: str, no_onnx: bool, out_dir: Path,
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
    from advforensics.tracing.signing import load_private_key, sign_record
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
    if tracer_kind == "random":
        tracer = create_tracer("random", length_scale=length_scale, gain=gain, seed=seed, **shape)
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
                         seed=seed, info={"classifier": str(classifier_path)})
    signer = sign_record(out_dir, key) if key is not None else None
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


@trace.command("identify")
@click.option("--record", "record_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory written by `trace separate`.")
@click.option("--examples", "examples_path", required=True, type=click.Path(path_type=Path),
              help="Evidence: an .npz/.npy (x_adv or another library's key names, NCHW or NHWC), a PNG/JPEG "
                   "file, or a folder of them.")
@click.option("--show", type=int, default=20, show_default=True, help="Per-example rows printed.")
@click.option("--rule", type=click.Choice(SCORE_RULES), default=None,
              help="Tracing rule (default: the record's: learned where the seller fitted it, else its main "
                   f"formula rule, else {DEFAULT_RULE}).")
@click.option("--threshold", type=float, default=0.99, show_default=True,
              help="learned rule: the probability at which a copy is accused.")
@click.option("--seller-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The seller's public key (KEY.pub from `trace keygen`): the record's signature must verify, "
                   "else nothing is traced. Without it an unsigned or unchecked record only warns.")
@seed_option
@json_option
def identify_cmd(record_dir: Path, examples_path: Path, show: int, rule: str | None, threshold: float,
                 seller_key: Path | None, seed: int, json_path: Path | None) -> None:
    """Name the copy that adversarial examples were crafted on (per example and pooled), or none.

    Every ONNX copy in the record directory is checked against the record's hash; with --seller-key
    the record itself must carry the seller's signature (a forger can recompute plain hashes).

    \b
    Example:
      advforensics trace identify --record runs/copies --examples advs.npz --seller-key keys/seller.pub \\
          --json trace.json
    """
    import torch

    from advforensics.evidence import load_evidence
    from advforensics.tracing.api import identify
    from advforensics.tracing.identify import LearnedReport
    from advforensics.tracing.record import read_record
    from advforensics.tracing.signing import verify_record

    if not 0.5 < threshold < 1.0:
        raise InputValidationError(f"--threshold must be in (0.5, 1), got {threshold}")
    torch.manual_seed(seed)
    signer = verify_record(record_dir, seller_key) if seller_key is not None else None  # before anything else
    record = read_record(record_dir, warn=False)  # for the input shape; identify() verifies again and warns
    c, h, w = record.input_shape
    evidence = load_evidence(examples_path, channels=c, size=(h, w))
    if signer:
        click.echo(f"record signature verified (seller key {signer[:16]})")
    click.echo(evidence.summary())
    report = identify(record_dir, evidence, rule=rule, threshold=threshold, public_key=seller_key)
    payload = report.to_dict()
    payload["record_signature"] = {"verified": signer is not None, "public_key_sha256": signer}
    payload["evidence"] = {"source": evidence.source, "layout": evidence.layout, "dropped_rows": evidence.dropped}
    if isinstance(report, LearnedReport):
        _print_learned(payload, show)
    else:
        _print_formula(payload, evidence.rows, show)
    emit_json(json_path, payload)


def _named(source: int | None) -> str:
    return "none of these copies" if source is None else f"copy {source}"


def _print_learned(payload: dict, show: int) -> None:
    click.echo(f"{payload['num_examples']} examples, {payload['num_copies']} copies, rule learned "
               f"(accused at confidence >= {payload['threshold']}: the learned probability and a formula "
               "rule's null must both reach it)")
    for row in payload["per_example"][:show]:
        verdict = "ACCUSED" if row["accused"] else "undecided" if row["source"] is not None else ""
        click.echo(f"  row {row['row']}: {_named(row['source'])}  confidence {row['confidence']:.4f}  {verdict}".rstrip())
    if not payload["one_source"]:
        click.echo(f"several sources: copies accused {payload['accusations']} times; one verdict per group")
    for group in payload["groups"]:
        label = "pooled" if payload["one_source"] else f"group of {len(group['rows'])}"
        click.echo(f"{label}: {_named(group['source'])}  confidence {group['confidence']:.4f}"
                   + ("  ACCUSED" if group["accused"] else ""))


def _print_formula(payload: dict, rows: list[int], show: int) -> None:
    calibrated = "false_alarm_rate" in payload["aggregate"]
    click.echo(f"{payload['num_examples']} examples, {payload['num_copies']} copies, rule {payload['rule']}"
               + ("" if calibrated else " (uncalibrated for this rule: no confidence)"))
    for row, entry in list(zip(rows, payload["per_example"]))[:show]:
        extra = f"  confidence {entry['confidence']:.3f}" if calibrated else ""
        click.echo(f"  row {row}: copy {entry['source']}  score {max(entry['scores']):+.4f}  "
                   f"ranking {entry['ranking']}{extra}")
    agg = payload["aggregate"]
    if not payload["one_source"]:
        click.echo(f"several sources: copies accused {payload['accusations']} times; no single verdict "
                   "(the learned rule splits the file per source)")
    click.echo(f"aggregate: copy {agg['source']}  ranking {agg['ranking']}"
               + (f"  confidence {agg['confidence']:.4f} (geometric mean of the examples' false-alarm rates)"
                  if "confidence" in agg else ""))


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputValidationError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputValidationError(f"expected comma-separated integers, got {text!r}") from None


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


@trace.command("experiment")
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

    from advforensics.cli.attacks import parse_param
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
    config = ExperimentConfig(attacks=attack_names, alphas=_floats(alphas), clean_alphas=_floats(clean_alphas),
                              tau=tau, copies=num_copies, per_source=per_source, copy_counts=_ints(copy_counts),
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


COMMANDS = [trace]
