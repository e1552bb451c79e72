"""`advforensics attribution ...`: build an attack corpus, train/evaluate attributors, attribute images."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click

from advforensics.cli.common import ForensicsGroup, OutputDir, OutputFile, UserError, device_option, emit_json, json_option, seed_option

log = logging.getLogger("advforensics.attribution")


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


def _load_grid(grid: str, include_clean: bool):
    from advforensics.attribution.grid import GRIDS, GridSpec, get_grid
    from advforensics.errors import InputValidationError

    if grid in GRIDS:
        return get_grid(grid, include_clean)
    path = Path(grid)
    if not path.is_file():
        raise InputValidationError(f"--grid must be one of {', '.join(GRIDS)} or a grid JSON file, got {grid!r}")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputValidationError(f"grid file {path} is not valid JSON: {error}") from None
    if include_clean:
        payload["include_clean"] = True
    return GridSpec.from_dict(payload)


@attribution.command("corpus")
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
    import numpy as np
    import torch

    from advforensics.attribution.corpus import CorpusConfig, generate_corpus
    from advforensics.attribution.victims import load_victims
    from advforensics.data import load_dataset
    from advforensics.errors import InputValidationError
    from advforensics.utils import resolve_device

    torch.set_num_threads(max(1, threads))
    target = resolve_device(device)
    grid_spec = _load_grid(grid, clean_class)
    if cw_kappa_scale is None:
        cw_kappa_scale = "auto" if grid in ("default", "small") else "1"
    if start < 0:
        raise InputValidationError(f"--start must be >= 0, got {start}")
    dataset = load_dataset(data_name, split=split, data_dir=data_dir, limit=None if limit is None else start + limit)
    indices = np.arange(start, len(dataset.images), dtype=np.int64)
    if len(indices) == 0:
        raise InputValidationError(f"--start {start} leaves no images of the {split} split")
    images, labels = dataset.images[start:], dataset.labels[start:]
    victim_models, victim_info = load_victims(victims)
    for model in victim_models.values():
        model.to(target)
    victim_params: dict = {}
    existing = out / "manifest.json"
    if resume and existing.is_file():  # reuse the stored C&W scales: re-measuring could differ in the last bit
        try:
            victim_params = json.loads(existing.read_text())["config"]["victim_params"]
        except (json.JSONDecodeError, KeyError, TypeError):
            victim_params = {}
    if any(a.name == "cw-l2" for a in grid_spec.attacks) and not victim_params:
        if cw_kappa_scale == "auto":
            from advforensics.attacks.cw import kappa_scale_for

            if cw_headroom < 1:
                raise InputValidationError(f"--cw-headroom must be >= 1, got {cw_headroom}")
            x, y = images[:32].to(target), labels[:32].to(target)
            for name, model in victim_models.items():
                with torch.no_grad():
                    ok = model(x).argmax(1) == y
                top = cw_headroom * max(grid_spec.attack("cw-l2").values)
                scale = kappa_scale_for(model, x[ok], y[ok], nominal_max=top)
                victim_params[name] = {"cw-l2": {"kappa_scale": scale}}
                log.info("victim %s: C&W kappa_scale %.4f", name, scale)
        else:
            try:
                scale = float(cw_kappa_scale)
            except ValueError:
                raise InputValidationError(f"--cw-kappa-scale must be 'auto' or a number, got {cw_kappa_scale!r}")
            if scale != 1.0:
                victim_params = {name: {"cw-l2": {"kappa_scale": scale}} for name in victim_models}
    info = getattr(dataset, "info", None)
    data_info = {"name": data_name, "split": split, "limit": limit, "start": start,
                 **({k: v for k, v in vars(info).items() if isinstance(v, (str, int, float))} if info else {})}
    config = CorpusConfig(shard_images=shard_images, batch_size=batch_size, quantize=not float_evidence, seed=seed,
                          victim_params=victim_params)
    start = time.perf_counter()
    report = generate_corpus(images, labels, victim_models, grid_spec, out, config=config, indices=indices,
                             data_info=data_info, victim_info=victim_info, resume=resume, progress=progress,
                             device=target)
    seconds = time.perf_counter() - start
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


@attribution.command("train")
@click.option("--corpus", "corpus_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Corpus directory.")
@click.option("--out", required=True, type=OutputFile(),
              help="Weights file (.safetensors); the card goes beside it as .json.")
@click.option("--model", "kind", type=click.Choice(["mtaa", "single-task", "single-label"]), default="mtaa",
              show_default=True, help="Attributor kind.")
@click.option("--task", type=click.Choice(["attack", "victim", "hyper"]), default=None,
              help="The task of a single-task model.")
@click.option("--label-mode", type=click.Choice(["attack+victim", "attack+victim+hyper"]),
              default="attack+victim+hyper", show_default=True, help="Joint labels of a single-label model.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-3, show_default=True)
@click.option("--width", type=int, default=16, show_default=True, help="Trunk width (paper ResNets: 64).")
@click.option("--weighting", type=click.Choice(["uncertainty", "sum"]), default="uncertainty", show_default=True)
@click.option("--no-task-specific", is_flag=True, help="Ablation: one shared last stage, no fusion.")
@click.option("--no-pe", is_flag=True, help="Ablation: no perturbation extraction.")
@click.option("--shuffle-labels", is_flag=True, help="Control: permute training labels (expect chance).")
@click.option("--balance", is_flag=True, help="Sample attack x victim classes equally (small clean class).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimiser steps.")
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="Share of the clean images (with all their examples) held out for testing.")
@click.option("--calibration-fraction", type=float, default=0.1, show_default=True,
              help="Share of the remaining clean images held out to calibrate probabilities and the 'unknown "
                   "attack' threshold (0: no open-set rule).")
@click.option("--false-abstention", "target_false_abstention", type=float, default=0.03, show_default=True,
              help="Share of known attacks the calibrated threshold may call 'unknown attack'.")
@click.option("--augment", "augment", multiple=True,
              help="Train also on re-encoded evidence (jpeg:Q, resize:S, noise:SD, png): a share of each batch "
                   "is swapped for it, labels unchanged. Repeat the option.")
@click.option("--open-set-score", type=click.Choice(["msp", "distance", "either"]), default="msp", show_default=True,
              help="What the 'unknown attack' rule measures: the top calibrated probability, the features' "
                   "distance to the nearest known class, or either of them at half the rate each (all thresholds "
                   "are fitted and stored).")
@click.option("--clean-recall", "target_clean_recall", type=float, default=None,
              help="Answer 'not adversarial' whenever p(clean) reaches the threshold that gives this share of "
                   "the calibration clean images (e.g. 0.99); default: when clean is the most probable class.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@click.option("--backbone-data", default=None,
              help="Pretrain MTAA's PE backbone on this data set's training split (default: the corpus's clean "
                   "training images, which are few in a small corpus).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory holding --backbone-data's files.")
@click.option("--backbone-epochs", type=int, default=3, show_default=True, help="PE backbone pretraining epochs.")
@click.option("--histogram", is_flag=True, help="Side feature (not in the paper): the 8-bit pixel histogram.")
@click.option("--probe-victims", "probe_victims", default=None,
              help="Side feature (not in the paper): query these victims (the corpus's, same weights; a directory "
                   "or comma list) and feed their margins to the heads. The model file then carries them.")
@click.option("--probe-siblings", is_flag=True,
              help="With --probe-victims: in training, show each example's own victim through another probed model "
                   "of its architecture, as evidence from victims whose weights the investigator lacks looks.")
@click.option("--hyper-per-attack", is_flag=True,
              help="One regressor output per attack, read at the predicted attack (not in the paper).")
@click.option("--attacks", default=None, help="Train on these attacks only (comma list; scalability tables).")
@click.option("--only-victims", "only_victims", default=None,
              help="Train on these victims only (comma list; scalability tables).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@device_option
@seed_option
@json_option
def train_cmd(corpus_dir: Path, out: Path, kind: str, task: str | None, label_mode: str, epochs: int,
              batch_size: int, lr: float, weight_decay: float, width: int, weighting: str, no_task_specific: bool,
              no_pe: bool, shuffle_labels: bool, balance: bool, max_steps: int | None, test_fraction: float,
              calibration_fraction: float, target_false_abstention: float, augment: tuple[str, ...],
              open_set_score: str, target_clean_recall: float | None, threads: int,
              backbone_data: str | None, data_dir: Path | None, backbone_epochs: int, histogram: bool,
              probe_victims: str | None, attacks: str | None, only_victims: str | None, progress: bool, device: str,
              seed: int, hyper_per_attack: bool, probe_siblings: bool, json_path: Path | None) -> None:
    """Train an attributor on a corpus's training split (split by clean image) and save it.

    \b
    Example:
      advforensics attribution train --corpus runs/corpus --out runs/mtaa.safetensors --epochs 10
      advforensics attribution train --corpus runs/corpus --model single-task --task victim --out runs/st-v.safetensors
      advforensics attribution train --corpus runs/corpus --shuffle-labels --out runs/control.safetensors
      advforensics attribution train --corpus runs/corpus --attacks fgsm,pgd-linf \
          --only-victims resnet18,vgg16,vgg19 --out runs/mtaa-2x3.safetensors
      advforensics attribution train --corpus runs/corpus --no-pe --histogram --probe-victims runs/zoo \
          --hyper-per-attack --out runs/mtaa-fx.safetensors
    """
    import torch

    from advforensics.attribution.corpus import load_corpus
    from advforensics.attribution.train import TrainConfig, load_backbone_data, save_attributor, train_attributor
    from advforensics.attribution.victims import load_victims

    torch.set_num_threads(max(1, threads))
    if out.exists():
        raise UserError(f"{out} exists; choose another --out (nothing is overwritten)")
    corpus = load_corpus(corpus_dir)
    if attacks or only_victims:
        corpus = corpus.subset(_comma_list(attacks), _comma_list(only_victims))
    config = TrainConfig(model=kind, task=task, label_mode=label_mode, epochs=epochs, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, width=width, weighting=weighting,
                         task_specific=not no_task_specific, use_pe=not no_pe, seed=seed,
                         shuffle_labels=shuffle_labels, balance=balance, max_steps=max_steps,
                         backbone_epochs=backbone_epochs, histogram=histogram, probe=probe_victims is not None,
                         hyper_per_attack=hyper_per_attack, test_fraction=test_fraction,
                         calibration_fraction=calibration_fraction, target_false_abstention=target_false_abstention,
                         open_set_score=open_set_score, augment=augment, probe_siblings=probe_siblings,
                         target_clean_recall=target_clean_recall)
    pretrain = None if backbone_data is None else load_backbone_data(backbone_data, data_dir)
    probe = None if probe_victims is None else load_victims(probe_victims)
    start = time.perf_counter()
    result = train_attributor(corpus, config, progress=progress, device=device, backbone_data=pretrain,
                              probe_victims=probe)
    seconds = time.perf_counter() - start
    result.card["train_seconds"] = seconds
    save_attributor(result.model, result.card, out)
    last = result.history[-1] if result.history else {}
    click.echo(f"trained {kind} on {result.card['n_train']} examples ({result.card['steps']} steps, "
               f"{seconds:.1f}s); last epoch loss {last.get('total', float('nan')):.4f}; saved {out}")
    emit_json(json_path, {"model": str(out), "seconds": seconds, "history": result.history, "seed": seed,
                          "n_params": result.card["n_params"], "n_train": result.card["n_train"]})


@attribution.command("evaluate")
@click.option("--corpus", "corpus_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=OutputDir(), help="Report directory.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--single-task", "single_task", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Single-task models (attack, victim, hyper) for Delta_MTL; repeat the option.")
@click.option("--heldout", "heldout", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="A corpus made by code, victims or images the training corpus did not use (e.g. --grid "
                   "heldout, retrained victims, --start past the training images); every row is evaluated. "
                   "Repeat the option.")
@click.option("--reencode", "reencodings", multiple=True,
              help="Also evaluate the test split re-encoded: png, jpeg:Q, resize:S, noise:SD. Repeat the option.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
@device_option
@seed_option
@json_option
def evaluate_cmd(corpus_dir: Path, model_path: Path, out: Path, split: str, single_task: tuple[Path, ...],
                 heldout: tuple[Path, ...], reencodings: tuple[str, ...], threads: int, device: str, seed: int,
                 json_path: Path | None) -> None:
    """Accuracy, RMSE (overall, per attack), params, FLOPs, confusion plots; Delta_MTL with --single-task.

    With an open-set attributor (trained with a calibration split), also the field report (field.md):
    open-set answers on the split, on its re-encodings and on every --heldout corpus, with intervals.

    \b
    Example:
      advforensics attribution evaluate --corpus runs/corpus --model runs/mtaa.safetensors --out runs/report \\
          --single-task runs/st-a.safetensors --single-task runs/st-v.safetensors --single-task runs/st-h.safetensors
      advforensics attribution evaluate --corpus runs/field --model runs/mtaa.safetensors --out runs/report \\
          --heldout runs/heldout --reencode jpeg:90
    """
    import torch

    from advforensics.attribution.corpus import load_corpus
    from advforensics.attribution.evaluate import delta_mtl, evaluate_attributor, write_report
    from advforensics.attribution.train import load_attributor
    from advforensics.utils import resolve_device

    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    target = resolve_device(device)
    from advforensics.evidence.transforms import check_reencoding

    for spec in reencodings:
        check_reencoding(spec)
    corpus = load_corpus(corpus_dir)
    heldout_corpora = [(path, load_corpus(path)) for path in heldout]  # all verified before any work
    model, card = load_attributor(model_path)
    metrics = evaluate_attributor(model.to(target), card, corpus, split=split)
    if single_task:
        single = {}
        for path in single_task:
            m, c = load_attributor(path)
            m.to(target)
            task_metrics = evaluate_attributor(m, c, corpus, split=split)
            for metric in ("attack_accuracy", "victim_accuracy", "rmse"):
                if metric in task_metrics and len(c["config"]["tasks"]) == 1:
                    single[metric] = task_metrics
        metrics["delta_mtl"] = delta_mtl(metrics, single)
    write_report(metrics, out)
    if card.get("open_set") is not None:
        from advforensics.attribution.field import field_report, write_field_report

        field = field_report(model, card, corpus, split=split, reencodings=reencodings,
                             heldout=[(path.name, c) for path, c in heldout_corpora])
        write_field_report(field, out, f"Attribution in the field ({card['kind']}, {model_path.name})")
        metrics["field"] = field
        for name, m in field.items():
            click.echo(f"  {name}: attack {_share(m['attack_accuracy'])}, victim {_share(m['victim_accuracy'])}, "
                       f"unknown family -> unknown {_share(m['unknown_called_unknown'])}, clean -> not adversarial "
                       f"{_share(m['clean_called_not_adversarial'])}")
    click.echo(f"{card['kind']} on {split} (n={metrics['n']}): attack {100 * metrics.get('attack_accuracy', 0):.2f}% "
               f"victim {100 * metrics.get('victim_accuracy', 0):.2f}% RMSE {metrics.get('rmse') or float('nan'):.3f}"
               + (f" Delta_MTL {metrics['delta_mtl']:+.2f}%" if "delta_mtl" in metrics else "")
               + f"; report in {out}")
    emit_json(json_path, metrics)


def _share(rate: dict | None) -> str:
    return "-" if rate is None else f"{100 * rate['rate']:.2f}% of {rate['n']}"


def _comma_list(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@attribution.command("predict")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--as-json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@click.option("--float-evidence", is_flag=True,
              help="Keep float inputs as they are (default: round to the 8-bit grid, as the corpus stores evidence).")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Ground truth (CSV or Parquet: attack, victim, optional strength and row); prints the metrics.")
@seed_option
@json_option
def predict_cmd(model_path: Path, source: Path, as_json: bool, float_evidence: bool, labels_path: Path | None,
                seed: int, json_path: Path | None) -> None:
    """Attribute images: attack family (or "not adversarial" / "unknown attack"), victim architecture and
    strength, with calibrated probabilities and each image's row in SOURCE.

    SOURCE is a PNG/JPEG/BMP file, a folder of them, an .npy, or an .npz (from `attacks run` or
    elsewhere: x_adv, adv, images, ... ; uint8, uint16 or float in [0, 1]; NCHW, NHWC or (N, H, W);
    rows a stored success mask marks as failed are left out).

    \b
    Example:
      advforensics attribution predict --model runs/mtaa.safetensors evidence.npz --json preds.json
      advforensics attribution predict --model runs/mtaa.safetensors evidence.npz --labels truth.csv
      (truth.csv: row,attack,victim,strength  e.g.  0,pgd-linf,resnet18,32 ; "not adversarial" for clean)
    """
    from advforensics.attribution.attributor import Attributor
    from advforensics.attribution.field import Truth, field_metrics, summary_row

    evidence = Attributor.read_for(model_path, source)  # first: a bad file fails before the model loads
    attributor = Attributor.load(model_path)
    truth = None if labels_path is None else Truth.from_table(labels_path, evidence.rows)
    if evidence.dropped:  # never silently: the row numbers in the names show which are left
        click.echo(evidence.summary(), err=True)
    answers = attributor.predict(evidence, float_evidence=float_evidence)
    names = evidence.names
    records = answers.records(names, evidence.rows)
    if as_json:
        click.echo(json.dumps(records, indent=2))
    else:
        for rec in records:
            strength = rec["strength"]
            victim = "" if rec["victim"] is None else f", victim {rec['victim']} ({rec['victim_probability']:.3f})"
            click.echo(f"[{rec['row']}] {rec['source']}: attack {rec['attack']} ({rec['attack_probability']:.3f})"
                       f"{victim}" + ("" if strength is None else f", strength {rec['strength_unit']} {strength:.1f}"))
    payload: dict = {"model": str(model_path), "predictions": records}
    if truth is not None:
        metrics = field_metrics(answers, truth, group_by=())
        payload["metrics"] = metrics
        for key, value in summary_row(str(labels_path.name), metrics).items():
            click.echo(f"{key}: {value}")
    emit_json(json_path, payload)


COMMANDS = [attribution]
