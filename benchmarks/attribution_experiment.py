"""End-to-end attribution experiment: corpus -> MTAA, single-task, single-label, ablation, shuffled control.

Usage (each stage resumable / skippable; outputs under --out):
    python benchmarks/attribution_experiment.py corpus --data mnist-5k --split test --limit 300 \
        --victims runs/attribution/victims --grid small --out runs/attribution/exp
    python benchmarks/attribution_experiment.py train --out runs/attribution/exp --models mtaa,control \
        --epochs 4 --width 8
    python benchmarks/attribution_experiment.py table --out runs/attribution/exp
    python benchmarks/attribution_experiment.py corpus-table --out runs/attribution/exp
    python benchmarks/attribution_experiment.py errors --out runs/attribution/exp --model mtaa

`train` trains each requested model (mtaa, st-attack, st-victim, st-hyper, single-label, single-label-av,
no-pe, plain-sum, control; a "+fx" suffix adds the side features of side.py, whose victim probe loads
the corpus's victims from --probe-victims or from the files its manifest records) that has no weights
yet, evaluates it on the test split, and writes
<out>/models/<name>.{safetensors,json} and <out>/metrics/<name>.json; `table` joins the metrics
into Markdown (with Delta_MTL when the three single-task models exist, the clean-class table when
the corpus has one, and the scalability table) and prints it.

Scalability (paper Tables 9-10): a name with a suffix, e.g. `mtaa@2x3` or `single-label@2x3`,
trains that variant on a subset of the corpus (SCALES: 2x3 = FGSM and PGD on resnet18, vgg16,
vgg19); the 3 x 5 rows are the models trained on the whole default-grid corpus.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from advforensics.attribution.corpus import load_corpus
from advforensics.attribution.evaluate import (delta_mtl, evaluate_attributor, false_alarm_table, results_table,
                                              write_report)
from advforensics.attribution.train import TrainConfig, load_backbone_data, save_attributor, train_attributor
from advforensics.attribution.victims import load_victims
from advforensics.utils import write_json

VARIANTS = {
    "mtaa": {},
    "st-attack": {"model": "single-task", "task": "attack"},
    "st-victim": {"model": "single-task", "task": "victim"},
    "st-hyper": {"model": "single-task", "task": "hyper"},
    "single-label": {"model": "single-label", "label_mode": "attack+victim+hyper"},
    "single-label-av": {"model": "single-label", "label_mode": "attack+victim"},
    "no-pe": {"use_pe": False},
    "no-tsl": {"use_pe": False, "task_specific": False},
    "plain-sum": {"use_pe": False, "task_specific": False, "weighting": "sum"},
    "control": {"shuffle_labels": True},
    "mtaa-balanced": {"balance": True},
}
#: the side features (side.py): "+fx" = pixel histogram and victim probe; "+hist" / "+probe" = one of them
SIDE = {"+fx": {"histogram": True, "probe": True}, "+hist": {"histogram": True}, "+probe": {"probe": True},
        "+fxa": {"histogram": True, "probe": True, "hyper_per_attack": True}}
VARIANTS.update({f"{name}+fx": {**VARIANTS[name], **SIDE["+fx"]} for name in
                 ("mtaa", "no-pe", "no-tsl", "plain-sum", "st-attack", "st-victim", "st-hyper", "control")})
VARIANTS.update({f"no-pe{suffix}": {**VARIANTS["no-pe"], **SIDE[suffix]} for suffix in ("+hist", "+probe")})
#: "+fxa": the side features and one regressor output per attack
VARIANTS.update({f"{name}+fxa": {**VARIANTS[name], **SIDE["+fxa"]} for name in ("mtaa", "no-pe", "control")})


#: name -> (attacks, victims) of a scalability subset; None means all of the corpus's
SCALES: dict[str, tuple[list[str] | None, list[str] | None]] = {
    "2x3": (["fgsm", "pgd-linf"], ["resnet18", "vgg16", "vgg19"]),
}


def split_name(name: str) -> tuple[str, str | None]:
    """'mtaa@2x3' -> ('mtaa', '2x3'); 'mtaa' -> ('mtaa', None)."""
    variant, _, scale = name.partition("@")
    if variant not in VARIANTS or (scale and scale not in SCALES):
        raise SystemExit(f"unknown model {name!r}; variants {sorted(VARIANTS)}, scales {sorted(SCALES)}")
    return variant, scale or None


def cmd_corpus(args: argparse.Namespace) -> None:
    from click.testing import CliRunner

    from advforensics.cli.main import cli

    argv = ["attribution", "corpus", "--data", args.data, "--split", args.split, "--limit", str(args.limit),
            "--victims", args.victims, "--grid", args.grid, "--out", str(Path(args.out) / "corpus"),
            "--seed", str(args.seed), "--shard-images", str(args.shard_images), "--json",
            str(Path(args.out) / "corpus_report.json"), "--no-progress", "--device", args.device,
            "--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.clean_class:
        argv.append("--clean-class")
    if (Path(args.out) / "corpus" / "manifest.json").exists():
        argv.append("--resume")
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    print(result.output)


def cmd_corpus_table(args: argparse.Namespace) -> None:
    """Success rate per grid cell (victims x values, per attack; C&W also the share that reached
    kappa) and generation throughput per victim x attack, from the corpus manifest."""
    manifest = json.loads((Path(args.out) / "corpus" / "manifest.json").read_text())
    cells, victims = manifest["cells"], manifest["victims"]
    text = ""
    for spec in manifest["grid"]["attacks"]:
        values = spec["values"]
        text += f"\n{spec['name']} success (%)" + (", reached kappa (%) in brackets" if spec["name"] == "cw-l2" else "")
        text += "\n\n| victim | " + " | ".join(f"{v:g}" for v in values) + " |\n"
        text += "| --- |" + " ---: |" * len(values) + "\n"
        for victim in victims:
            row = {c["hyper"]: c for c in cells if c["victim"] == victim and c["attack"] == spec["name"]}
            parts = []
            for v in values:
                c = row[v]
                part = f"{100 * c['success_rate']:.0f}"
                if spec["name"] == "cw-l2" and c["attempted"]:
                    part += f" ({100 * c['reached'] / c['attempted']:.0f})"
                parts.append(part)
            text += f"| {victim} | " + " | ".join(parts) + " |\n"
    names = [spec["name"] for spec in manifest["grid"]["attacks"]]
    text += "\nthroughput (attacked image x hyperparameter value per second, 8-bit re-check included)\n\n"
    text += "| victim | " + " | ".join(names) + " |\n| --- |" + " ---: |" * len(names) + "\n"
    for victim in victims:
        by = {t["attack"]: t for t in manifest["throughput"] if t["victim"] == victim}
        text += f"| {victim} | " + " | ".join(f"{by[n]['images_per_s']:.1f}" for n in names) + " |\n"
    n = sum(int(e["n_examples"]) for e in manifest["units"].values())
    seconds = sum(float(e.get("seconds", 0.0)) for e in manifest["units"].values())
    text += f"\n{n} examples, {seconds:.0f} s of generation summed over units\n"
    print(text)


def cmd_errors(args: argparse.Namespace) -> None:
    """Where one trained model errs on the test split: attack errors per hyperparameter value, and
    the correlation of the regressed hyperparameter with the truth per attack."""
    import numpy as np

    from advforensics.attribution.corpus import split_by_clean_image
    from advforensics.attribution.evaluate import predict_outputs
    from advforensics.attribution.train import load_attributor

    torch.set_num_threads(1)
    out = Path(args.out)
    model, card = load_attributor(out / "models" / f"{args.model}.safetensors")
    corpus = load_corpus(out / "corpus")
    _, test = split_by_clean_image(corpus.columns["clean_index"], card["split"]["test_fraction"],
                                   card["split"]["seed"])
    rows = np.flatnonzero(test)
    pred = predict_outputs(model, card, corpus.float_images(rows))
    attack, hyper = corpus.columns["attack"][rows], corpus.columns["hyper"][rows]
    for name in corpus.grid.attack_names:
        chosen = attack == name
        if "attack_probs" in pred:
            called = np.array(card["attack_names"])[pred["attack_probs"].argmax(1)]
            wrong = chosen & (called != name)
            print(f"{name}: {int(wrong.sum())} of {int(chosen.sum())} misattributed; by value "
                  + str({float(v): int((wrong & (hyper == v)).sum()) for v in np.unique(hyper[chosen])
                         if (wrong & (hyper == v)).any()}))
        if "hyper" in pred and name != "clean" and chosen.sum() > 1:
            r = np.corrcoef(pred["hyper"][chosen], hyper[chosen])[0, 1]
            print(f"{name}: corr(regressed, true) {r:.3f}; regressed std {pred['hyper'][chosen].std():.2f}, "
                  f"true std {hyper[chosen].std():.2f}")


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    full = load_corpus(out / "corpus")
    pretrain = load_backbone_data(args.backbone_data, args.data_dir) if args.backbone_data else None
    probe_victims = None
    if any(VARIANTS[split_name(name)[0]].get("probe") for name in args.models.split(",")):
        files = args.probe_victims or ",".join(i["file"] for i in full.manifest["victim_info"].values())
        probe_victims = load_victims(files)
    for name in args.models.split(","):
        variant, scale = split_name(name)
        corpus = full if scale is None else full.subset(*SCALES[scale])
        weights = out / "models" / f"{name}.safetensors"
        if weights.exists():
            logging.info("%s exists, skipped", weights)
            continue
        config = TrainConfig(epochs=args.epochs, width=args.width, seed=args.seed, batch_size=args.batch_size,
                             backbone_epochs=args.backbone_epochs, **VARIANTS[variant])
        start = time.perf_counter()
        result = train_attributor(corpus, config, progress=False, device=args.device, backbone_data=pretrain,
                                  probe_victims=probe_victims)
        result.card["train_seconds"] = time.perf_counter() - start
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_attributor(result.model, result.card, weights)
        metrics = evaluate_attributor(result.model, result.card, corpus)
        metrics.update({"name": name, "train_seconds": result.card["train_seconds"], "history": result.history,
                        "train_config": result.card["train"]})
        write_json(out / "metrics" / f"{name}.json", metrics)
        write_report(metrics, out / "reports" / name)
        print(f"{name}: attack {metrics.get('attack_accuracy')} victim {metrics.get('victim_accuracy')} "
              f"rmse {metrics.get('rmse')} ({metrics['train_seconds']:.0f}s)", flush=True)


def cmd_table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = {p.stem: json.loads(p.read_text()) for p in sorted((out / "metrics").glob("*.json"))}
    single = {"attack_accuracy": rows.get("st-attack"), "victim_accuracy": rows.get("st-victim"),
              "rmse": rows.get("st-hyper")}
    text = results_table([rows[k] for k in VARIANTS if k in rows])
    if all(single.values()):
        for name in ("mtaa", "no-pe", "no-tsl", "plain-sum"):
            if name in rows:
                text += f"\nDelta_MTL({name} vs single-task) = {delta_mtl(rows[name], single):+.2f}%\n"
    single_fx = {"attack_accuracy": rows.get("st-attack+fx"), "victim_accuracy": rows.get("st-victim+fx"),
                 "rmse": rows.get("st-hyper+fx")}
    if all(single_fx.values()):
        for name in ("mtaa+fx", "no-pe+fx", "no-tsl+fx", "plain-sum+fx", "mtaa+fxa", "no-pe+fxa"):
            if name in rows:
                text += f"\nDelta_MTL({name} vs single-task+fx) = {delta_mtl(rows[name], single_fx):+.2f}%\n"
    with_clean = [rows[k] for k in VARIANTS if k in rows and rows[k].get("false_alarm")]
    if with_clean:
        text += "\n### Clean class (false alarms)\n\n" + false_alarm_table(with_clean)
    scaled = [dict(rows[k], name=f"{k} ({len(rows[k]['attack_names'])} attack classes x "
                                 f"{len(rows[k]['victim_names'])} victim classes)")
              for k in sorted(rows) if "@" in k or (k in ("mtaa", "single-label") and any("@" in j for j in rows))]
    if scaled:
        text += "\n### Scalability (subsets of the corpus)\n\n" + results_table(scaled)
    print(text)
    (out / "table.md").write_text(text)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("corpus")
    p.add_argument("--data", default="mnist-5k")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--victims", required=True)
    p.add_argument("--grid", default="small")
    p.add_argument("--clean-class", action="store_true")
    p.add_argument("--shard-images", type=int, default=50)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p = sub.add_parser("train")
    p.add_argument("--out", required=True)
    p.add_argument("--models", default="mtaa,st-attack,st-victim,st-hyper,single-label,control")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backbone-data", default=None, help="pretrain MTAA's PE backbone on this set's train split")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--backbone-epochs", type=int, default=3)
    p.add_argument("--probe-victims", default=None,
                   help="victim weights for +fx models (directory or comma list; default: the manifest's files)")
    p = sub.add_parser("table")
    p.add_argument("--out", required=True)
    p = sub.add_parser("corpus-table")
    p.add_argument("--out", required=True)
    p = sub.add_parser("errors")
    p.add_argument("--out", required=True)
    p.add_argument("--model", required=True, help="a trained model's name, e.g. plain-sum")
    args = parser.parse_args()
    {"corpus": cmd_corpus, "train": cmd_train, "table": cmd_table, "corpus-table": cmd_corpus_table,
     "errors": cmd_errors}[args.cmd](args)


if __name__ == "__main__":
    main()
