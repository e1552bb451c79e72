"""The tracing study (`advforensics trace experiment`): the separate-and-trace tables, actually run.

Under torchrun the ranks share each attack set's source copies (tracing_examples.attack_sources); rank 0
fits the learned rule and the peer copies once and writes every file, and the other ranks read them.

Stages (each attack set is cached under OUT/examples/, so an interrupted run resumes):
- Table 1, clean accuracy of C and of every copy against alpha.
- Table 2, tracing accuracy per attack x alpha (m copies), for every score rule, with per-source
  accuracy, a 95% interval and the prediction histogram. Only examples that fool their source
  copy are kept; whether C alone is fooled is recorded.
- Field: each attack's examples (largest alpha) under every attacker behaviour and re-encoding of
  field.REGIMES, traced by every formula rule and by the learned rule, which the seller fits on
  its own train images (simulated attackers, learned.py), cached as OUT/learned_rule.json.
- Table 3, Kolmogorov-Smirnov D of the scores: source vs an innocent copy, innocent vs innocent.
- Fig. 4a, score histograms of the source copy vs the other copies.
- Fig. 4b, accuracy against the number of copies: examples are crafted on each of the first
  max(copy_counts) copies, and those from the first m copies are traced among those m copies.
  Permutation tables are prefix-stable (copy i is the same copy whatever m is), so this is what a
  seller with m copies would see.
- Table 5, transfer: the share of examples crafted on copy i that also fool copy j.
- Table 6, two colluding buyers pool their query budgets: each query goes to one of their two copies
  (chosen by a hash of the query, so the oracle is a fixed function); the trace should name one of them.
- Peer: the random-mask copies of Cheng et al. (ICML 2023, peer.py) built from the same C, attacked
  with the same attacks and budgets on the same number of copies, traced with their data-limited
  score (which also needs the clean image; ours does not).
- Controls: examples crafted on copies built with another tracer (a seller's innocent look-alike)
  and on C alone, traced with the real copies: the measured null, including how often it yields a
  confident (false) accusation. The robustness cost is the median L2 needed to fool a copy vs C.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advforensics.errors import InputValidationError
from advforensics.studies.base import Study
from advforensics import distributed
from advforensics.studies.tracing_examples import ClassifierOracle, CollusionOracle, ExampleSet, attack_sources
from advforensics.studies.tracing_metrics import (CONFIDENT, ks_statistics, median_or_none, robustness_cost,
                                                  tracing_metrics, transfer_matrix)
from advforensics.tracing.calibration import Calibration, calibrate_rules
from advforensics.tracing.copies import CopyParams, CopySet
from advforensics.tracing.field import REGIMES, regime_row
from advforensics.tracing.learned import fit_rule, scorer_from_dict
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES, STAGES
from advforensics.tracing.permutations import copy_layout, tracer_blocks
from advforensics.tracing.reports import trace_scores
from advforensics.tracing.scores import rule_scores
from advforensics.tracing.tracer import Tracer, create_tracer, load_tracer
from advforensics.utils import atomic_write_text, wilson_interval
from advforensics.vocab import LearnedFeatures
from advforensics.weights import load_weights, save_weights, state_tensors

PEER_FORMAT = "advforensics-peer-copies/1"

log = logging.getLogger(__name__)

# Query budgets per attack (documented in docs/history/tracing-sessions-1-2.md); every attack ends on the boundary.
DEFAULT_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "hopskipjump": {"max_iter": 20, "max_eval": 1000, "init_eval": 100},
    "boundary": {"max_iter": 200},
    "qeba": {"max_queries": 4000},
    "surfree": {"max_queries": 4000},
    "signopt": {"max_queries": 3000},
}


@dataclass
class TracingStudyConfig:
    attacks: list[str] = field(default_factory=lambda: ["hopskipjump", "boundary"])
    alphas: list[float] = field(default_factory=lambda: [0.15])
    clean_alphas: list[float] = field(default_factory=lambda: [0.05, 0.10, 0.15, 0.20])
    tau: float = 2.0
    copies: int = 5
    per_source: int = 45
    copy_counts: list[int] = field(default_factory=lambda: [2, 5, 10, 15, 20])
    scaling_attack: str = "hopskipjump"
    scaling_per_source: int = 10
    control_examples: int = 45
    calibration_images: int = 200
    length_scale: float = 1.5
    gain: float = 0.8
    tracer_file: str | None = None  # a saved tracer (e.g. a trained VAE) instead of the random one
    main_rule: str = DEFAULT_RULE
    fit_images: int = 3000  # train images on which the field stage's learned rule is fitted
    learned_features: str = "base"  # the learned rule's feature set (vocab.LearnedFeatures)
    peer_train_images: int = 10000
    peer_epochs: int = 3
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0

    def params_for(self, attack: str) -> dict[str, Any]:
        return {**DEFAULT_ATTACK_PARAMS.get(attack, {}), **self.attack_params.get(attack, {})}

    def check_attacks(self) -> None:
        """Every attack registered and hard-label: the copies answer labels only, nothing else leaves them."""
        from advforensics.attacks import ATTACKS, create_attack
        from advforensics.attacks.base import ThreatModel

        for name in [*self.attacks, self.scaling_attack]:
            if ATTACKS.get(name).threat_model is not ThreatModel.HARD_LABEL:
                hard = [a for a in ATTACKS.names() if ATTACKS.get(a).threat_model is ThreatModel.HARD_LABEL]
                raise InputValidationError(f"{name} is a {ATTACKS.get(name).threat_model.value} attack; the tracing "
                                           f"experiment attacks hard-label copies: choose from {', '.join(hard)}")
        used = {*self.attacks, self.scaling_attack}
        for name in self.attack_params:
            if name not in used:
                raise InputValidationError(f"--param for {name!r}, which this experiment does not run "
                                           f"({', '.join(sorted(used))})")
        for name in used:  # the attack's own checks of its budget, before any work
            create_attack(name, **{k: v for k, v in self.params_for(name).items() if k != "seed"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.check_attacks()
        if self.main_rule not in FORMULA_RULES:
            raise InputValidationError(f"unknown score rule {self.main_rule!r}")
        if not self.attacks:
            raise InputValidationError("no attacks given")
        if self.learned_features not in LearnedFeatures.values():
            raise InputValidationError(f"learned_features must be one of {', '.join(LearnedFeatures.values())}")
        for a in self.alphas + self.clean_alphas:
            CopyParams(alpha=a, tau=self.tau)  # checks alpha and tau
        for name in ("per_source", "scaling_per_source", "control_examples", "calibration_images",
                     "fit_images", "peer_train_images", "peer_epochs"):
            if int(getattr(self, name)) < 1:
                raise InputValidationError(f"{name}: must be >= 1")


class TracingStudy(Study):
    """Every stage for one classifier and data set; OUT/results.json, OUT/tables.md and OUT/plots/."""

    name = "tracing"
    stage_names = STAGES

    def __init__(self, classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 calibration_images: torch.Tensor, config: TracingStudyConfig, out_dir: str | Path,
                 info: dict[str, Any] | None = None,
                 train_data: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        super().__init__(config, out_dir, info)
        self.config: TracingStudyConfig = config
        self.classifier = classifier.eval()
        self.images, self.labels = images, labels
        with torch.no_grad():
            self.num_classes = int(classifier(images[:1]).shape[1])
        for m in [config.copies, *config.copy_counts]:
            if m < 2:
                raise InputValidationError(f"copy count {m}: must be >= 2")
        # past max_copies(K) copies the tracer holds one block of K outputs per max_copies(K) copies
        self.tracer_outputs = self.num_classes * tracer_blocks(self.num_classes, max([config.copies, *config.copy_counts]))
        self.calibration_images = calibration_images[: config.calibration_images]
        (self.out_dir / "examples").mkdir(parents=True, exist_ok=True)
        self.tracer = self._tracer(config.seed) if config.tracer_file is None else load_tracer(config.tracer_file)
        if self.tracer.input_shape != tuple(int(v) for v in images.shape[1:]):
            raise InputValidationError(f"tracer takes {self.tracer.input_shape}, images are {tuple(images.shape[1:])}")
        self.tracer_hash = self.tracer.content_hash()  # cached attack sets are only reused for this tracer
        if {"peer", "field"} & set(config.stages) and train_data is None:
            raise InputValidationError("the peer and field stages need labelled training images")
        self.train_data = train_data
        self._calibrations: dict[tuple[float, int, str], Calibration] = {}

    @classmethod
    def from_files(cls, classifier: str | Path, data: str, config: TracingStudyConfig, out_dir: str | Path,
                   data_dir: str | Path | None = None) -> TracingStudy:
        """C from a zoo checkpoint; the data set's test split is attacked, its train split (shuffled by
        the seed) calibrates the formula rules and fits the learned rule."""
        from advforensics.data import load_dataset
        from advforensics.models import load_model
        model, _ = load_model(classifier)
        test = load_dataset(data, "test", data_dir=data_dir)
        train = load_dataset(data, "train", data_dir=data_dir)
        order = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(config.seed))
        return cls(model, test.images, test.labels, train.images[order[:config.calibration_images]], config, out_dir,
                   info={"classifier": str(classifier), "data": data},
                   train_data=(train.images[order], train.labels[order]))

    def _tracer(self, seed: int) -> Tracer:
        """The smooth random tracer (also the control's look-alike when a tracer file is used)."""
        c, h, w = (int(v) for v in self.images.shape[1:])
        return create_tracer("random", length_scale=self.config.length_scale, gain=self.config.gain, seed=seed,
                             num_outputs=self.tracer_outputs, in_channels=c, image_size=(h, w))

    def copyset(self, alpha: float, m: int, tracer: Tracer | None = None) -> CopySet:
        perms, blocks = copy_layout(self.num_classes, m)
        return CopySet(self.classifier, tracer or self.tracer, perms, CopyParams(alpha=alpha, tau=self.config.tau),
                       blocks=blocks)

    def calibration(self, alpha: float, m: int, rule: str) -> Calibration:
        if (alpha, m, rule) not in self._calibrations:  # one set of boundary points serves every rule
            for name, cal in calibrate_rules(self.copyset(alpha, m), self.calibration_images,
                                             seed=self.config.seed).items():
                self._calibrations[(alpha, m, name)] = cal
        return self._calibrations[(alpha, m, rule)]

    def examples(self, name: str, attack: str, models: list[nn.Module], source_ids: list[int], per_source: int,
                 meta: dict[str, Any]) -> ExampleSet:
        path = self.out_dir / "examples" / f"{name}.npz"
        meta = {"attack": attack, "params": self.config.params_for(attack), "per_source": per_source,
                "sources": source_ids, "seed": self.config.seed, "tracer": self.tracer_hash, **meta}
        ranks = distributed.current()
        cached = ExampleSet.load(path, meta) if ranks.is_main else None
        if ranks.broadcast(cached is not None):  # rank 0 decides, so that every rank attacks or none does
            cached = cached or ExampleSet.load(path, meta)
            assert cached is not None  # rank 0 read it from disk
            log.info("reusing %s (%d examples)", path, len(cached.sources))
            return cached
        seed = self.config.seed + sum(map(ord, name))  # fresh images per set
        result = attack_sources(attack, self.config.params_for(attack), models, source_ids, per_source,
                                self.images, self.labels, seed, ranks)
        if ranks.is_main:
            result.save(path, meta)
        return result

    # ------------------------------------------------------------------ stages
    def stage_clean(self) -> list[dict[str, Any]]:
        with torch.no_grad():
            c_pred = torch.cat([self.classifier(chunk).argmax(1) for chunk in self.images.split(1000)])
        rows = [{"alpha": 0.0, "classifier": float((c_pred == self.labels).float().mean()), "copies": []}]
        for alpha in self.config.clean_alphas:
            copies = self.copyset(alpha, self.config.copies)
            pred = torch.cat([copies.labels(chunk) for chunk in self.images.split(1000)])
            acc = (pred == self.labels.unsqueeze(1)).float().mean(0)
            rows.append({"alpha": alpha, "classifier": rows[0]["classifier"], "copies": acc.tolist(),
                         "worst_cost_points": 100 * (rows[0]["classifier"] - float(acc.min()))})
        return rows

    def stage_tracing(self) -> list[dict[str, Any]]:
        cfg = self.config
        rows = []
        for alpha in cfg.alphas:
            copies = self.copyset(alpha, cfg.copies)
            for attack in cfg.attacks:
                ex = self.examples(f"{attack}_a{alpha}_m{cfg.copies}", attack,
                                   [copies.copy(i) for i in range(cfg.copies)], list(range(cfg.copies)),
                                   cfg.per_source, {"alpha": alpha, "copies": cfg.copies, "tau": cfg.tau})
                rows.append(self._trace_row(attack, alpha, copies, ex))
        return rows

    def _trace_row(self, attack: str, alpha: float, copies: CopySet, ex: ExampleSet) -> dict[str, Any]:
        row: dict[str, Any] = {"attack": attack, "alpha": alpha, "attacked": ex.attacked,
                               "successful": len(ex.sources), "median_l2": median_or_none(ex.l2),
                               "mean_queries": float(ex.queries.float().mean()) if len(ex.queries) else None}
        if len(ex.sources) == 0:
            return row
        with torch.no_grad():
            row["c_fooled"] = float((self.classifier(ex.x_adv).argmax(1) != ex.labels).float().mean())
        row["rules"], row["ks"], row["scores"] = {}, {}, {}
        all_scores = rule_scores(copies, ex.x_adv)
        for rule in FORMULA_RULES:
            scores = all_scores[rule]
            cal = self.calibration(alpha, copies.num_copies, rule)
            row["rules"][rule] = tracing_metrics(scores, ex.sources, rule, cal)
            row["ks"][rule] = ks_statistics(scores, ex.sources)
            idx = torch.arange(len(ex.sources))
            innocent = torch.ones_like(scores, dtype=torch.bool)
            innocent[idx, ex.sources] = False
            row["scores"][rule] = {"source": scores[idx, ex.sources].tolist(), "innocent": scores[innocent].tolist()}
        row["transfer"] = transfer_matrix(copies, ex)
        fooled = copies.labels(ex.x_adv) != ex.labels.unsqueeze(1)
        transfers = fooled.sum(1) > 1
        row["transfer_examples"] = int(transfers.sum())
        if transfers.any():
            main = all_scores[self.config.main_rule][transfers].argmax(1)
            row["transfer_accuracy"] = float((main == ex.sources[transfers]).float().mean())
        return row

    def stage_field(self) -> list[dict[str, Any]]:
        """Every regime of field.REGIMES on each attack's examples at the largest alpha."""
        cfg = self.config
        alpha = cfg.alphas[-1]
        copies = self.copyset(alpha, cfg.copies)
        path = self.out_dir / "learned_rule.json"
        meta = {"alpha": alpha, "copies": cfg.copies, "tau": cfg.tau, "tracer": self.tracer_hash,
                "fit_images": cfg.fit_images, "seed": cfg.seed, "learned_features": cfg.learned_features}
        ranks = distributed.current()
        stored = json.loads(path.read_text()) if path.is_file() and ranks.is_main else None
        if ranks.is_main and (stored is None or stored.get("meta") != meta):  # rank 0 fits, the others read it
            images, labels = self.train_data  # type: ignore[misc]
            # the last train images: the calibration uses the first ones
            rule = fit_rule(copies, images[-cfg.fit_images:], labels[-cfg.fit_images:], seed=cfg.seed,
                            features=cfg.learned_features)
            stored = {"meta": meta, "rule": rule}
            atomic_write_text(path, json.dumps(stored))
        ranks.barrier()
        stored = stored or json.loads(path.read_text())
        scorer = scorer_from_dict(stored["rule"])
        calibrations = {rule: self.calibration(alpha, cfg.copies, rule) for rule in FORMULA_RULES}
        rows = []
        for attack in cfg.attacks:
            ex = self.examples(f"{attack}_a{alpha}_m{cfg.copies}", attack, [copies.copy(i) for i in range(cfg.copies)],
                               list(range(cfg.copies)), cfg.per_source, {"alpha": alpha, "copies": cfg.copies,
                                                                         "tau": cfg.tau})
            for regime in REGIMES:
                rows.append(regime_row(copies, scorer, calibrations, attack, regime, ex.clean, ex.x_adv, ex.labels,
                                       ex.sources, cfg.seed).to_dict())
        return rows

    def stage_scaling(self) -> list[dict[str, Any]]:
        cfg = self.config
        alpha = cfg.alphas[-1]
        m_max = max(cfg.copy_counts)
        big = self.copyset(alpha, m_max)
        ex = self.examples(f"scaling_{cfg.scaling_attack}_a{alpha}_m{m_max}", cfg.scaling_attack,
                           [big.copy(i) for i in range(m_max)], list(range(m_max)), cfg.scaling_per_source,
                           {"alpha": alpha, "copies": m_max, "tau": cfg.tau})
        rows = []
        for m in sorted(set(cfg.copy_counts)):
            keep = ex.sources < m
            copies = self.copyset(alpha, m)
            row: dict[str, Any] = {"copies": m, "examples": int(keep.sum()), "chance": 1.0 / m, "rules": {}}
            all_scores = rule_scores(copies, ex.x_adv[keep])
            for rule in FORMULA_RULES:
                scores = all_scores[rule]
                row["rules"][rule] = {"accuracy": float((scores.argmax(1) == ex.sources[keep]).float().mean())}
            rows.append(row)
        return rows

    def stage_controls(self) -> list[dict[str, Any]]:
        """Examples from look-alike copies (another tracer) and from C alone, traced with the real copies."""
        cfg = self.config
        alpha = cfg.alphas[-1]
        copies = self.copyset(alpha, cfg.copies)
        lookalike = self.copyset(alpha, cfg.copies, tracer=self._tracer(cfg.seed + 1000))
        per = max(1, cfg.control_examples // cfg.copies)
        rows = []
        for attack in cfg.attacks:
            sets = {
                "other tracer": self.examples(f"control_tracer_{attack}_a{alpha}", attack,
                                              [lookalike.copy(i) for i in range(cfg.copies)],
                                              list(range(cfg.copies)), per,
                                              {"alpha": alpha, "copies": cfg.copies, "tracer_seed": cfg.seed + 1000}),
                "C alone": self.examples(f"control_c_{attack}", attack, [ClassifierOracle(self.classifier)], [-1],
                                         cfg.control_examples, {"control": "classifier"}),
            }
            for kind, ex in sets.items():
                row: dict[str, Any] = {"attack": attack, "control": kind, "successful": len(ex.sources),
                                       "median_l2": median_or_none(ex.l2), "rules": {}}
                all_scores = rule_scores(copies, ex.x_adv) if len(ex.sources) else {}
                for rule, scores in all_scores.items():
                    report = trace_scores(scores, rule, self.calibration(alpha, cfg.copies, rule))
                    confidence = report.example_confidence
                    entry = {"histogram": torch.bincount(report.predicted, minlength=cfg.copies).tolist(),
                             "confident_share": float((confidence >= CONFIDENT).float().mean()),
                             "median_false_alarm": float(report.false_alarm.median())}
                    if kind == "other tracer":  # same-index "accuracy": the chance level of the null
                        entry["same_index_share"] = float((report.predicted == ex.sources).float().mean())
                    row["rules"][rule] = entry
                rows.append(row)
        return rows

    def stage_collusion(self) -> list[dict[str, Any]]:
        """Buyers 0 and 1 collude (pooled queries); how often is one of them named?"""
        cfg = self.config
        alpha = cfg.alphas[-1]
        copies = self.copyset(alpha, cfg.copies)
        rows = []
        for attack in cfg.attacks:
            ex = self.examples(f"collusion_{attack}_a{alpha}", attack, [CollusionOracle(copies.copy(0), copies.copy(1))],
                               [-2], cfg.control_examples, {"alpha": alpha, "copies": cfg.copies, "colluders": [0, 1]})
            row: dict[str, Any] = {"attack": attack, "colluders": [0, 1], "successful": len(ex.sources), "rules": {}}
            all_scores = rule_scores(copies, ex.x_adv) if len(ex.sources) else {}
            for rule, scores in all_scores.items():
                ranking = scores.argsort(1, descending=True)
                top = ranking[:, 0]
                top2 = ranking[:, :2].sort(1).values
                row["rules"][rule] = {
                    "named_0": float((top == 0).float().mean()), "named_1": float((top == 1).float().mean()),
                    "named_a_colluder": float((top <= 1).float().mean()),
                    "top2_both": float((top2 == torch.tensor([0, 1])).all(1).float().mean()),
                }
            rows.append(row)
        return rows

    def peer_copies(self) -> Any:
        """Cheng et al.'s copies of C, fine-tuned once and kept in OUT/peer_copies.safetensors."""
        from advforensics.tracing.peer import MaskConfig, build_masked_copies

        cfg = self.config
        assert self.train_data is not None
        images, labels = (t[: cfg.peer_train_images] for t in self.train_data)
        path = self.out_dir / "peer_copies.safetensors"
        card = {"format": PEER_FORMAT, "copies": cfg.copies, "peer_epochs": cfg.peer_epochs,
                "peer_train_images": cfg.peer_train_images, "seed": cfg.seed}
        ranks = distributed.current()
        if ranks.is_main and not path.is_file():  # rank 0 fine-tunes them once; every rank reads them
            copies = build_masked_copies(self.classifier, images, labels, cfg.copies,
                                         MaskConfig(finetune_epochs=cfg.peer_epochs, seed=cfg.seed))
            save_weights(path, state_tensors(copies), card)
            if not ranks.distributed:
                return copies
        ranks.barrier()
        if path.is_file():  # same structure with no fine-tuning, then the stored weights
            tensors, stored = load_weights(path, PEER_FORMAT, "peer copies")
            if {k: stored.get(k) for k in card} != card:
                raise InputValidationError(f"{path} was made with other settings; use a new --out directory")
            copies = build_masked_copies(self.classifier, images[:1], labels[:1], cfg.copies,
                                         MaskConfig(finetune_epochs=1, lr=1e-12, seed=cfg.seed))
            copies.load_state_dict(tensors)
            return copies.eval()
        raise InputValidationError(f"{path} is missing: rank 0 did not write the peer copies")

    def stage_peer(self) -> dict[str, Any]:
        from advforensics.tracing.peer import peer_scores

        cfg = self.config
        copies = self.peer_copies()
        pred = torch.cat([copies.labels(chunk) for chunk in self.images.split(1000)])
        out: dict[str, Any] = {"clean_accuracy": (pred == self.labels.unsqueeze(1)).float().mean(0).tolist(),
                               "mask_size": int(copies.masks[0].sum()), "rows": []}
        for attack in cfg.attacks:
            ex = self.examples(f"peer_{attack}_m{cfg.copies}", attack, [copies.copy(i) for i in range(cfg.copies)],
                               list(range(cfg.copies)), cfg.per_source,
                               {"copies": cfg.copies, "peer_epochs": cfg.peer_epochs,
                                "peer_train_images": cfg.peer_train_images})
            row: dict[str, Any] = {"attack": attack, "attacked": ex.attacked, "successful": len(ex.sources),
                                   "median_l2": median_or_none(ex.l2)}
            if len(ex.sources):
                scores = peer_scores(copies, ex.x_adv, ex.clean, labels=ex.labels)
                predicted = scores.argmax(1)
                correct = predicted == ex.sources
                row.update(accuracy=float(correct.float().mean()),
                           ci95=list(wilson_interval(int(correct.sum()), len(correct))),
                           per_source=[float(correct[ex.sources == i].float().mean()) for i in range(cfg.copies)],
                           histogram=torch.bincount(predicted, minlength=cfg.copies).tolist())
            out["rows"].append(row)
        return out

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        return {"robustness_cost": robustness_cost(results)}

    def report(self, results: dict[str, Any]) -> tuple[str, list[Path]]:
        from advforensics.reporting.tracing_tables import markdown_report, write_plots

        return markdown_report(results), write_plots(results, self.out_dir / "plots")
