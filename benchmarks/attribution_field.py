"""Attribution in the field (issue 11): train on a field corpus, measure on evidence it never saw.

Stages (each skips what exists under --out):
    python benchmarks/attribution_field.py train --corpus runs/attr-field/field --out runs/attr-field/study \
        --probe-victims runs/attr-field/v01 --models fx,plain,lofo-deepfool,lofo-cw
    python benchmarks/attribution_field.py evaluate --corpus runs/attr-field/field --out runs/attr-field/study \
        --heldout runs/attr-field/field-s2 --heldout runs/attr-field/heldout --reencode png --reencode jpeg:90
    python benchmarks/attribution_field.py table --out runs/attr-field/study
    python benchmarks/attribution_field.py delta-mtl --corpus runs/attr-field/field --out runs/attr-field/study

Models (all with the open-set rule calibrated on 10% of the training clean images; `evaluate` reports
each twice, abstaining on the top probability (<name>) and on the feature distance (<name>+distance)):
    fx              MTAA without PE, pixel histogram + victim probe + per-attack strength (session 4's best)
    plain           MTAA without PE and without side features (nothing ties it to the corpus's victims' weights)
    hist            MTAA without PE, pixel histogram only
    fx-aug          fx trained with a share of each batch re-encoded (JPEG 75/90, resized 0.75 and back)
    fx-sib          fx whose probe, in training, shows each row's own victim through a sibling of the same
                    architecture (the investigator does not hold the victim's weights)
    fx-sib-aug      both
    fx-sib-aug-c99  fx-sib-aug whose rule answers "not adversarial" at 99% clean recall on calibration
    lofo-<family>   fx trained without that family (leave-one-family-out): its test rows must read "unknown"
    lofo-<family>-plain   the same without side features
    st-attack, st-victim, st-hyper   single-task models with fx's features (Delta_MTL)
A "@s<seed>" suffix trains the same model with another seed (e.g. fx@s1).

The corpus, its held-out sets and the victims come from runs/attr-field/corpora.sh (docs/attribution.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from advforensics.attribution.corpus import load_corpus
from advforensics.attribution.evaluate import delta_mtl, evaluate_attributor
from advforensics.attribution.field import field_reports, summary_row, write_field_report
from advforensics.attribution.card import load_attributor, save_attributor
from advforensics.attribution.train import TrainConfig, train_attributor
from advforensics.attribution.victims import load_victims
from advforensics.reporting import markdown_table
from advforensics.utils import write_json

FX = {"use_pe": False, "histogram": True, "probe": True, "hyper_per_attack": True}
BASE = {"fx": FX, "plain": {"use_pe": False, "hyper_per_attack": True},
        "hist": {"use_pe": False, "histogram": True, "hyper_per_attack": True},
        "fx-aug": {**FX, "augment": ("jpeg:75", "jpeg:90", "resize:0.75")},
        "fx-sib": {**FX, "probe_siblings": True},
        "fx-sib-aug": {**FX, "probe_siblings": True, "augment": ("jpeg:75", "jpeg:90", "resize:0.75")},
        "fx-sib-aug-c99": {**FX, "probe_siblings": True, "augment": ("jpeg:75", "jpeg:90", "resize:0.75"),
                           "target_clean_recall": 0.99},
        "st-attack": {**FX, "model": "single-task", "task": "attack"},
        "st-victim": {**FX, "model": "single-task", "task": "victim"},
        "st-hyper": {**FX, "model": "single-task", "task": "hyper"}}


def model_spec(name: str) -> tuple[dict, str | None, int]:
    """(TrainConfig fields, family left out or None, seed) of a model name."""
    base, _, seed = name.partition("@s")
    left_out = None
    if base.startswith("lofo-"):
        rest = base[len("lofo-"):]
        plain = rest.endswith("-plain")
        left_out = rest[:-len("-plain")] if plain else rest
        fields = BASE["plain" if plain else "fx"]
    else:
        fields = BASE[base]
    return dict(fields), left_out, int(seed or 0)


def cmd_train(args: argparse.Namespace) -> None:
    corpus = load_corpus(args.corpus)
    probe = load_victims(args.probe_victims) if args.probe_victims else None
    models = Path(args.out) / "models"
    models.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        path = models / f"{name}.safetensors"
        if path.exists():
            print(f"{name}: exists", flush=True)
            continue
        fields, left_out, seed = model_spec(name)
        data = corpus if left_out is None else corpus.subset([a for a in corpus.attack_names
                                                              if a not in (left_out, "clean")])
        config = TrainConfig(epochs=args.epochs, width=args.width, seed=seed, test_fraction=args.test_fraction,
                             calibration_fraction=args.calibration_fraction, **fields)
        t0 = time.perf_counter()
        result = train_attributor(data, config, progress=False, probe_victims=probe if config.probe else None)
        result.card.train_seconds = time.perf_counter() - t0
        save_attributor(result.model, result.card, path)
        print(f"{name}: trained on {result.card.n_train} rows in {result.card.train_seconds:.0f}s", flush=True)


def cmd_evaluate(args: argparse.Namespace) -> None:
    corpus = load_corpus(args.corpus)
    heldout = [(Path(h).name, load_corpus(h)) for h in args.heldout]
    root = Path(args.out)
    for path in sorted((root / "models").glob("*.safetensors")):
        target = root / "reports" / path.stem
        if (target / "field.json").exists():
            continue
        model, card = load_attributor(path)
        t0 = time.perf_counter()
        if card.open_set is None:  # a single-task victim or strength model: no attack head to abstain with
            write_json(target / "metrics.json", evaluate_attributor(model, card, corpus))
            (target / "field.json").write_text("{}")
            continue
        # every abstention score the card holds, from one forward pass (older cards lack "either")
        scores = ("msp", "distance") + (("either",) if "either_thresholds" in card.open_set else ())
        results = field_reports(model, card, corpus, reencodings=tuple(args.reencode), heldout=heldout,
                                scores=scores)
        for score in scores:
            write_field_report(results[score], root / "reports" / (path.stem + ("" if score == "msp" else f"+{score}")),
                               f"Attribution in the field: {path.stem}, abstaining on {score}")
        write_json(target / "metrics.json", evaluate_attributor(model, card, corpus))
        print(f"{path.stem}: evaluated in {time.perf_counter() - t0:.0f}s", flush=True)


def cmd_table(args: argparse.Namespace) -> None:
    root = Path(args.out)
    rows = []
    for report in sorted((root / "reports").glob("*/field.json")):
        for evidence, m in json.loads(report.read_text()).items():
            rows.append({"model": report.parent.name, **summary_row(evidence, m)})
    print(markdown_table(rows))
    metrics = {p.parent.name: json.loads(p.read_text()) for p in (root / "reports").glob("*/metrics.json")}
    single = {task: metrics[f"st-{name}"] for task, name in (("attack_accuracy", "attack"),
                                                             ("victim_accuracy", "victim"), ("rmse", "hyper"))
              if f"st-{name}" in metrics}
    if len(single) == 3 and "fx" in metrics:
        print(f"\nDelta_MTL (fx against st-attack/st-victim/st-hyper, in-corpus test split): "
              f"{delta_mtl(metrics['fx'], single):+.2f}%")


def cmd_delta_mtl(args: argparse.Namespace) -> None:
    """Delta_MTL of fx against st-attack / st-victim / st-hyper on the in-corpus test split, with a 95%
    bootstrap interval over clean images (all rows of a resampled clean image enter together)."""
    import numpy as np

    from advforensics.attribution.corpus import attribution_splits
    from advforensics.attribution.answers import predict_outputs

    corpus = load_corpus(args.corpus)
    models = Path(args.out) / "models"
    out = {}
    for name in ("fx", "st-attack", "st-victim", "st-hyper"):
        model, card = load_attributor(models / f"{name}.safetensors")
        s = card.split
        test = attribution_splits(corpus.columns["clean_index"], s.test_fraction, s.calibration_fraction,
                                  s.seed)[2]
        rows = np.flatnonzero(test)
        out[name] = predict_outputs(model, card, corpus.float_images(rows))
    attack, victim, hyper = corpus.attack_targets()[rows], corpus.victim_targets()[rows], corpus.hyper_targets()[rows]
    adversarial = corpus.columns["attack"][rows] != "clean"
    strength = adversarial & (corpus.columns["attack"][rows] != "deepfool")
    images = corpus.columns["clean_index"][rows]
    unique = np.unique(images)
    groups = {i: np.flatnonzero(images == i) for i in unique}

    def metrics(name: str, take: np.ndarray) -> dict[str, float]:
        o, m = out[name], {}
        if "attack_probs" in o:
            m["attack_accuracy"] = float((o["attack_probs"][take].argmax(1) == attack[take]).mean())
        if "victim_probs" in o:
            m["victim_accuracy"] = float((o["victim_probs"][take].argmax(1) == victim[take]).mean())
        if "hyper" in o:
            t = take[strength[take]]
            m["rmse"] = float(np.sqrt(np.mean((o["hyper"][t] - hyper[t]) ** 2)))
        return m

    def delta(take: np.ndarray) -> float:
        single = {"attack_accuracy": metrics("st-attack", take), "victim_accuracy": metrics("st-victim", take),
                  "rmse": metrics("st-hyper", take)}
        return delta_mtl(metrics("fx", take), single)

    point = delta(np.arange(len(rows)))
    rng = np.random.default_rng(0)
    boots = [delta(np.concatenate([groups[i] for i in rng.choice(unique, len(unique))])) for _ in range(args.resamples)]
    low, high = np.quantile(boots, [0.025, 0.975])
    print(f"Delta_MTL (fx vs st-attack/st-victim/st-hyper, test split, {len(unique)} clean images, {len(rows)} rows): "
          f"{point:+.2f}% [{low:+.2f}, {high:+.2f}] (95% bootstrap over clean images, {args.resamples} resamples)")
    for name in out:
        print(f"  {name}: {metrics(name, np.arange(len(rows)))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("train")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="fx,plain,lofo-deepfool,lofo-cw-l2")
    p.add_argument("--probe-victims", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--test-fraction", type=float, default=0.5)
    p.add_argument("--calibration-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("evaluate")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--heldout", action="append", default=[])
    p.add_argument("--reencode", action="append", default=[])
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("table")
    p.add_argument("--out", required=True)
    p = sub.add_parser("delta-mtl")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resamples", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(max(1, getattr(args, "threads", 1)))
    {"train": cmd_train, "evaluate": cmd_evaluate, "table": cmd_table, "delta-mtl": cmd_delta_mtl}[args.stage](args)


if __name__ == "__main__":
    main()
