"""The attribution study (`advforensics attribution experiment`): the MTAA paper's tables, actually run.

Stages (each resumable: the corpus resumes unit by unit, a model whose weights exist is not retrained):
- corpus: the attack corpus (attribution.build.build_corpus) under OUT/corpus.
- train: every named model variant trained on the corpus and evaluated on its test split:
  OUT/models/<name>.safetensors, OUT/metrics/<name>.json, OUT/reports/<name>/. Variants: MTAA, the
  single-task and single-label baselines, the ablations (no PE, no task-specific layers, plain sum),
  the shuffled-label control, each with our side features ("+fx", "+fxa"); "<variant>@2x3" trains it on
  the scalability subset (paper Tables 9-10).
- errors: where each model errs: attack errors per hyperparameter value, and how well the regressed
  hyperparameter follows the truth per attack.
The report: the results table, Delta_MTL against the single-task models, the clean class's false
alarms, the scalability rows and the corpus's success and throughput per grid cell.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advforensics.attribution.build import build_corpus
from advforensics.attribution.corpus import MANIFEST, load_corpus, split_by_clean_image
from advforensics.attribution.answers import predict_outputs
from advforensics.attribution.evaluate import delta_mtl, evaluate_attributor, write_report
from advforensics.attribution.card import load_attributor, save_attributor
from advforensics.attribution.train import TrainConfig, load_backbone_data, train_attributor
from advforensics.attribution.victims import load_victims
from advforensics.errors import InputValidationError
from advforensics.reporting.attribution_tables import corpus_report, false_alarm_table, results_table
from advforensics.studies.base import Study
from advforensics.utils import write_json
from advforensics.vocab import AttributionStage

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, Any]] = {
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
#: the side features (side.py): "+fx" = pixel histogram and victim probe; "+hist" / "+probe" = one of
#: them; "+fxa" = both and one regressor output per attack
SIDE = {"+fx": {"histogram": True, "probe": True}, "+hist": {"histogram": True}, "+probe": {"probe": True},
        "+fxa": {"histogram": True, "probe": True, "hyper_per_attack": True}}
VARIANTS.update({f"{name}+fx": {**VARIANTS[name], **SIDE["+fx"]} for name in
                 ("mtaa", "no-pe", "no-tsl", "plain-sum", "st-attack", "st-victim", "st-hyper", "control")})
VARIANTS.update({f"no-pe{suffix}": {**VARIANTS["no-pe"], **SIDE[suffix]} for suffix in ("+hist", "+probe")})
VARIANTS.update({f"{name}+fxa": {**VARIANTS[name], **SIDE["+fxa"]} for name in ("mtaa", "no-pe", "control")})

#: name -> (attacks, victims) of a scalability subset (paper Tables 9-10)
SCALES: dict[str, tuple[list[str], list[str]]] = {"2x3": (["fgsm", "pgd-linf"], ["resnet18", "vgg16", "vgg19"])}
#: (MTL variant, the single-task models it is compared with) for Delta_MTL
DELTA_MTL = [(name, "") for name in ("mtaa", "no-pe", "no-tsl", "plain-sum")] + \
    [(name, "+fx") for name in ("mtaa+fx", "no-pe+fx", "no-tsl+fx", "plain-sum+fx", "mtaa+fxa", "no-pe+fxa")]
STAGES = AttributionStage.values()


def split_name(name: str) -> tuple[str, str | None]:
    """'mtaa@2x3' -> ('mtaa', '2x3'); 'mtaa' -> ('mtaa', None)."""
    variant, _, scale = name.partition("@")
    if variant not in VARIANTS or (scale and scale not in SCALES):
        raise InputValidationError(f"unknown model {name!r}; variants {', '.join(VARIANTS)}, scales "
                                   f"{', '.join(SCALES)} (as in mtaa@2x3)")
    return variant, scale or None


@dataclass
class AttributionStudyConfig:
    """victims: a folder of zoo weights or a comma list; grid: a grid name or JSON file."""

    victims: str
    data: str = "mnist-5k"
    data_dir: str | None = None
    split: str = "test"
    limit: int = 300
    grid: str = "small"
    clean_class: bool = False
    shard_images: int = 50
    attack_batch_size: int = 128
    models: list[str] = field(default_factory=lambda: ["mtaa", "st-attack", "st-victim", "st-hyper",
                                                       "single-label", "control"])
    epochs: int = 4
    width: int = 8
    batch_size: int = 64
    backbone_data: str | None = None  # pretrain MTAA's PE backbone on this set's train split
    backbone_epochs: int = 3
    probe_victims: str | None = None  # victims for the +fx probe (default: the corpus's own files)
    max_steps: int | None = None  # cap on training steps per model (quick runs, tests)
    device: str = "auto"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in self.models:
            split_name(name)
        if not self.models:
            raise InputValidationError("no models given")
        for name in ("limit", "shard_images", "attack_batch_size", "epochs", "width", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputValidationError(f"{name}: must be >= 1")

    def train_config(self, variant: str) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, width=self.width, seed=self.seed, batch_size=self.batch_size,
                           backbone_epochs=self.backbone_epochs, max_steps=self.max_steps, **VARIANTS[variant])


class AttributionStudy(Study):
    name = "attribution"
    stage_names = STAGES

    def __init__(self, config: AttributionStudyConfig, out_dir: str | Path) -> None:
        super().__init__(config, out_dir, {"data": config.data, "victims": config.victims})
        self.config: AttributionStudyConfig = config
        self.corpus_dir = self.out_dir / "corpus"

    def stage_corpus(self) -> dict[str, Any]:
        cfg = self.config
        job = build_corpus(cfg.data, cfg.victims, cfg.grid, self.corpus_dir, data_dir=cfg.data_dir, split=cfg.split,
                           limit=cfg.limit, clean_class=cfg.clean_class, shard_images=cfg.shard_images,
                           batch_size=cfg.attack_batch_size, seed=cfg.seed,
                           resume=(self.corpus_dir / MANIFEST).is_file(), progress=False, device=cfg.device)
        report = job.report
        return {"examples": report.n_examples, "units": report.units_total, "generated": len(report.units_generated),
                "corpus_id": report.corpus_id, "victim_params": job.victim_params}

    def stage_train(self) -> dict[str, Any]:
        cfg = self.config
        full = load_corpus(self.corpus_dir)
        pretrain = load_backbone_data(cfg.backbone_data, cfg.data_dir) if cfg.backbone_data else None
        probe_victims = None
        if any(VARIANTS[split_name(name)[0]].get("probe") for name in cfg.models):
            files = cfg.probe_victims or ",".join(i["file"] for i in full.manifest["victim_info"].values())
            probe_victims = load_victims(files)
        summary = {}
        for name in cfg.models:
            variant, scale = split_name(name)
            weights = self.out_dir / "models" / f"{name}.safetensors"
            metrics_path = self.out_dir / "metrics" / f"{name}.json"
            if weights.exists() and metrics_path.exists():
                log.info("%s exists, not retrained", weights)
                summary[name] = json.loads(metrics_path.read_text())
                continue
            corpus = full if scale is None else full.subset(*SCALES[scale])
            start = time.perf_counter()
            result = train_attributor(corpus, cfg.train_config(variant), progress=False, device=cfg.device,
                                      backbone_data=pretrain, probe_victims=probe_victims)
            result.card.train_seconds = time.perf_counter() - start
            save_attributor(result.model, result.card, weights)
            metrics = evaluate_attributor(result.model, result.card, corpus)
            metrics.update({"name": name, "train_seconds": result.card.train_seconds, "history": result.history,
                            "train_config": result.card.train})
            write_json(metrics_path, metrics)
            write_report(metrics, self.out_dir / "reports" / name)
            log.info("%s: attack %s victim %s rmse %s (%.0f s)", name, metrics.get("attack_accuracy"),
                     metrics.get("victim_accuracy"), metrics.get("rmse"), metrics["train_seconds"])
            summary[name] = metrics
        return summary

    def stage_errors(self) -> dict[str, Any]:
        corpus = load_corpus(self.corpus_dir)
        return {name: model_errors(self.out_dir / "models" / f"{name}.safetensors", corpus)
                for name in self.config.models if split_name(name)[1] is None}

    def report(self, results: dict[str, Any]) -> tuple[str, list[Path]]:
        parts = [f"# Attribution study\n\nData {self.config.data} ({self.config.split}, {self.config.limit} "
                 f"images), grid {self.config.grid}, seed {self.config.seed}."]
        if "train" in results:
            parts.append(models_report(results["train"]))
        manifest = self.corpus_dir / MANIFEST
        if manifest.is_file():
            parts.append(corpus_report(json.loads(manifest.read_text())))
        return "\n\n".join(parts) + "\n", []


def model_errors(weights: Path, corpus: Any) -> dict[str, Any]:
    """Attack errors per hyperparameter value and corr(regressed, true hyperparameter), per attack, on
    the test split the model's card names."""
    model, card = load_attributor(weights)
    _, test = split_by_clean_image(corpus.columns["clean_index"], card.split.test_fraction, card.split.seed)
    rows = np.flatnonzero(test)
    with torch.no_grad():
        pred = predict_outputs(model, card, corpus.float_images(rows))
    attack, hyper = corpus.columns["attack"][rows], corpus.columns["hyper"][rows]
    out: dict[str, Any] = {}
    for name in corpus.grid.attack_names:
        chosen = attack == name
        entry: dict[str, Any] = {"examples": int(chosen.sum())}
        if "attack_probs" in pred:
            called = np.array(card.attack_names)[pred["attack_probs"].argmax(1)]
            wrong = chosen & (called != name)
            entry["misattributed"] = int(wrong.sum())
            entry["misattributed_by_value"] = {f"{v:g}": int((wrong & (hyper == v)).sum())
                                               for v in np.unique(hyper[chosen]) if (wrong & (hyper == v)).any()}
        if "hyper" in pred and name != "clean" and chosen.sum() > 1 and hyper[chosen].std() > 0:
            entry["hyper_correlation"] = float(np.corrcoef(pred["hyper"][chosen], hyper[chosen])[0, 1])
        out[name] = entry
    return out


def models_report(rows: dict[str, dict[str, Any]]) -> str:
    """The results table, Delta_MTL, false alarms of the clean class and the scalability rows."""
    text = results_table([rows[k] for k in VARIANTS if k in rows])
    for name, suffix in DELTA_MTL:
        single = {"attack_accuracy": rows.get(f"st-attack{suffix}"), "victim_accuracy": rows.get(f"st-victim{suffix}"),
                  "rmse": rows.get(f"st-hyper{suffix}")}
        if name in rows and all(single.values()):
            text += f"\nDelta_MTL({name} vs single-task{suffix}) = {delta_mtl(rows[name], single):+.2f}%\n"
    with_clean = [rows[k] for k in VARIANTS if k in rows and rows[k].get("false_alarm")]
    if with_clean:
        text += "\n## Clean class (false alarms)\n\n" + false_alarm_table(with_clean)
    scaled = [dict(rows[k], name=f"{k} ({len(rows[k]['attack_names'])} attack classes x "
                                 f"{len(rows[k]['victim_names'])} victim classes)")
              for k in sorted(rows) if "@" in k or (k in ("mtaa", "single-label") and any("@" in j for j in rows))]
    if scaled:
        text += "\n## Scalability (subsets of the corpus)\n\n" + results_table(scaled)
    return text


__all__ = ["AttributionStudy", "AttributionStudyConfig", "SCALES", "VARIANTS", "split_name"]
