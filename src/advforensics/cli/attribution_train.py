"""`advforensics attribution train`: train an attributor (MTAA, a single-task or single-label baseline) on a corpus."""

from __future__ import annotations

import time
from pathlib import Path

import click

from advforensics.cli.common import ForensicsCommand
from advforensics.cli.options import OutputFile, device_option, emit_json, json_option, seed_option
from advforensics.cli.params import comma_list
from advforensics.vocab import OpenSetScore

@click.command("train", cls=ForensicsCommand, ranks_ok=True)
@click.option("--corpus", "corpus_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Corpus directory.")
@click.option("--out", required=True, type=OutputFile(card_copy=True),
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
@click.option("--open-set-score", type=click.Choice(OpenSetScore.values()), default=OpenSetScore.MSP.value,
              show_default=True,
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
@click.option("--resume", is_flag=True,
              help="Continue from <OUT base>.train-state.safetensors (written after every epoch) after an "
                   "interruption.")
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
              seed: int, hyper_per_attack: bool, probe_siblings: bool, resume: bool, json_path: Path | None) -> None:
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

    from advforensics import distributed
    from advforensics.attribution.corpus import load_corpus
    from advforensics.attribution.card import save_attributor
    from advforensics.attribution.train import TrainConfig, load_backbone_data, train_attributor
    from advforensics.attribution.victims import load_victims

    torch.set_num_threads(max(1, threads))
    corpus = load_corpus(corpus_dir)
    if attacks or only_victims:
        corpus = corpus.subset(comma_list(attacks), comma_list(only_victims))
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
    base = out.with_suffix("") if out.suffix == ".safetensors" else out
    state = base.with_name(base.name + ".train-state")  # <base>.train-state.safetensors
    ranks = distributed.current()
    if not resume and ranks.is_main:  # a fresh run: an old state is not continued
        state.with_name(state.name + ".safetensors").unlink(missing_ok=True)
    ranks.barrier()
    result = train_attributor(corpus, config, progress=progress, device=device, backbone_data=pretrain,
                              probe_victims=probe, checkpoint_path=state)
    seconds = time.perf_counter() - start
    result.card.train_seconds = seconds
    if ranks.is_main:  # under torchrun every rank holds the same model; one writes it
        save_attributor(result.model, result.card, out)
    last = result.history[-1] if result.history else {}
    click.echo(f"trained {kind} on {result.card.n_train} examples ({result.card.steps} steps, "
               f"{seconds:.1f}s); last epoch loss {last.get('total', float('nan')):.4f}; saved {out}")
    emit_json(json_path, {"model": str(out), "seconds": seconds, "history": result.history, "seed": seed,
                          "n_params": result.card.n_params, "n_train": result.card.n_train})
