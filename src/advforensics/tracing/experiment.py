"""`advforensics trace experiment`: the separate-and-trace tables, actually run.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advforensics.attacks import create_attack
from advforensics.errors import InputValidationError
from advforensics.tracing.calibration import Calibration, calibrate_rules, confidence_from_false_alarm
from advforensics.tracing.copies import CopyParams, CopySet
from advforensics.tracing.field import REGIMES, regime_row
from advforensics.tracing.reports import trace_scores
from advforensics.tracing.learned import fit_rule, scorer_from_dict
from advforensics.tracing.names import DEFAULT_RULE, FORMULA_RULES, STAGES
from advforensics.tracing.permutations import make_permutations, max_copies
from advforensics.tracing.scores import rule_scores
from advforensics.tracing.tracer import Tracer, create_tracer, load_tracer
from advforensics.utils import atomic_write_bytes, atomic_write_text, wilson_interval

log = logging.getLogger(__name__)

# Query budgets per attack (documented in docs/history/tracing-sessions-1-2.md); every attack ends on the boundary.
DEFAULT_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "hopskipjump": {"max_iter": 20, "max_eval": 1000, "init_eval": 100},
    "boundary": {"max_iter": 200},
    "qeba": {"max_queries": 4000},
    "surfree": {"max_queries": 4000},
    "signopt": {"max_queries": 3000},
}
CONFIDENT = 0.99  # a trace at or above this confidence is an accusation


@dataclass
class ExperimentConfig:
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

    def validate(self, num_classes: int) -> None:
        self.check_attacks()
        if self.main_rule not in FORMULA_RULES:
            raise InputValidationError(f"unknown score rule {self.main_rule!r}")
        if not self.attacks:
            raise InputValidationError("no attacks given")
        unknown = set(self.stages) - set(STAGES)
        if unknown or not self.stages:
            raise InputValidationError(f"stages must be some of {', '.join(STAGES)}; got {self.stages}")
        for a in self.alphas + self.clean_alphas:
            CopyParams(alpha=a, tau=self.tau).validate()
        limit = max_copies(num_classes)
        for m in [self.copies, *self.copy_counts]:
            if not 2 <= m <= limit:
                raise InputValidationError(f"copy count {m}: must be in 2..{limit} for {num_classes} classes")
        for name in ("per_source", "scaling_per_source", "control_examples", "calibration_images",
                     "fit_images", "peer_train_images", "peer_epochs"):
            if int(getattr(self, name)) < 1:
                raise InputValidationError(f"{name}: must be >= 1")


@dataclass
class ExampleSet:
    """Successful adversarial examples with their source (-1: C alone) and attack bookkeeping."""

    x_adv: torch.Tensor
    clean: torch.Tensor
    labels: torch.Tensor
    sources: torch.Tensor
    l2: torch.Tensor
    queries: torch.Tensor
    attacked: int

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        arrays = {k: getattr(self, k).numpy() for k in ("x_adv", "clean", "labels", "sources", "l2", "queries")}
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, attacked=np.array(self.attacked), meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, meta: dict[str, Any]) -> ExampleSet | None:
        """The cached set, or None when absent; a cache made with other settings is an error."""
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            stored = json.loads(str(data["meta"]))
            if stored != meta:
                raise InputValidationError(f"{path} was made with other settings; use a new --out directory")
            tensors = {k: torch.from_numpy(data[k]) for k in ("x_adv", "clean", "labels", "sources", "l2", "queries")}
            return cls(attacked=int(data["attacked"]), **tensors)


class ClassifierOracle(nn.Module):
    """C alone as a black box (the control): softmax scores, always in eval mode."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.eval()

    def train(self, mode: bool = True) -> ClassifierOracle:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x.float()), dim=1)


class CollusionOracle(nn.Module):
    """Two buyers answer an attacker's queries in turn: a query goes to copy a or copy b by a hash of
    its pixels (deterministic, so the attacked function is fixed). Hard labels only are meaningful."""

    def __init__(self, copy_a: nn.Module, copy_b: nn.Module) -> None:
        super().__init__()
        self.copy_a, self.copy_b = copy_a, copy_b

    def train(self, mode: bool = True) -> CollusionOracle:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        route_b = (x.flatten(1).double().sum(1) * 1e6).floor().remainder(2).bool()  # (B,)
        return torch.where(route_b.unsqueeze(1), self.copy_b(x), self.copy_a(x))


def attack_sources(attack_name: str, params: dict[str, Any], models: list[nn.Module], source_ids: list[int],
                   per_source: int, images: torch.Tensor, labels: torch.Tensor, seed: int) -> ExampleSet:
    """Attack each model on `per_source` fresh test images it classifies correctly; keep successes."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    attack = create_attack(attack_name, seed=seed, **params)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("x_adv", "clean", "labels", "sources", "l2", "queries")}
    cursor, attacked = 0, 0
    for model, source in zip(models, source_ids):
        chosen: list[int] = []
        while len(chosen) < per_source:
            if cursor >= len(order):
                raise InputValidationError("ran out of test images to attack; lower the example counts")
            batch = order[cursor:cursor + 4 * per_source]
            cursor += len(batch)
            with torch.no_grad():
                right = model(images[batch]).argmax(1) == labels[batch]
            chosen += batch[right].tolist()[: per_source - len(chosen)]
        idx = torch.tensor(chosen)
        start = time.time()
        result = attack(model, images[idx], labels[idx])
        ok = result.success
        log.info("%s on source %d: %d/%d successful (%.0f s)", attack_name, source, int(ok.sum()), len(idx),
                 time.time() - start)
        attacked += len(idx)
        parts["x_adv"].append(result.x_adv[ok]); parts["clean"].append(images[idx][ok])
        parts["labels"].append(labels[idx][ok]); parts["sources"].append(torch.full((int(ok.sum()),), source))
        parts["l2"].append(result.l2[ok]); parts["queries"].append(result.queries[ok])
    return ExampleSet(attacked=attacked, **{k: torch.cat(v) for k, v in parts.items()})


def tracing_metrics(scores: torch.Tensor, sources: torch.Tensor, rule: str,
                    calibration: Calibration | None) -> dict[str, Any]:
    """Accuracy (with a Wilson 95% interval), per-source accuracy, prediction histogram, the
    share of confident accusations, and 3-example pooled accuracy, for one score rule."""
    m = scores.shape[1]
    predicted = scores.argmax(1)
    correct = predicted == sources
    n = len(sources)
    out: dict[str, Any] = {
        "examples": n,
        "accuracy": float(correct.float().mean()),
        "ci95": list(wilson_interval(int(correct.sum()), n)),
        "per_source": [float(correct[sources == i].float().mean()) if (sources == i).any() else None
                       for i in range(m)],
        "per_source_n": [int((sources == i).sum()) for i in range(m)],
        "histogram": torch.bincount(predicted, minlength=m).tolist(),
    }
    if calibration is not None and calibration.rule == rule:
        report = trace_scores(scores, rule, calibration)
        confident = confidence_from_false_alarm(report.false_alarm, m) >= CONFIDENT
        out["confident_share"] = float(confident.float().mean())
        out["confident_wrong"] = int((confident & ~correct).sum())
    hits = groups = 0
    for i in range(m):
        rows = scores[sources == i]
        for start in range(0, len(rows) - 2, 3):
            groups += 1
            hits += int(trace_scores(rows[start:start + 3], rule, None).aggregate_source == i)
    out["pooled3_accuracy"] = hits / groups if groups else None
    out["pooled3_groups"] = groups
    return out


def ks_statistics(scores: torch.Tensor, sources: torch.Tensor) -> dict[str, float]:
    """KS D between the source copy's scores and one innocent copy's, and between two innocents."""
    from scipy.stats import ks_2samp

    m = scores.shape[1]
    offsets = torch.arange(len(sources))
    source = scores[offsets, sources].numpy()
    innocent_a = scores[offsets, (sources + 1) % m].numpy()
    innocent_b = scores[offsets, (sources + 2) % m].numpy()
    return {"source_vs_innocent": float(ks_2samp(source, innocent_a).statistic),
            "innocent_vs_innocent": float(ks_2samp(innocent_a, innocent_b).statistic)}


def transfer_matrix(copies: CopySet, examples: ExampleSet) -> list[list[float]]:
    """T[i][j] = share of examples crafted on copy i whose label under copy j differs from the clean label."""
    fooled = copies.labels(examples.x_adv) != examples.labels.unsqueeze(1)  # (N, m)
    return [[float(fooled[examples.sources == i, j].float().mean()) if (examples.sources == i).any() else float("nan")
             for j in range(copies.num_copies)] for i in range(copies.num_copies)]


class TracingExperiment:
    """Runs every stage for one classifier and data set and writes OUT/results.json."""

    def __init__(self, classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 calibration_images: torch.Tensor, config: ExperimentConfig, out_dir: Path,
                 info: dict[str, Any] | None = None,
                 train_data: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.classifier = classifier.eval()
        self.images, self.labels = images, labels
        self.num_classes = int(classifier(images[:1]).shape[1])
        config.validate(self.num_classes)
        self.config = config
        self.calibration_images = calibration_images[: config.calibration_images]
        self.out_dir = Path(out_dir)
        (self.out_dir / "examples").mkdir(parents=True, exist_ok=True)
        self.tracer = self._tracer(config.seed) if config.tracer_file is None else load_tracer(config.tracer_file)
        if self.tracer.input_shape != tuple(int(v) for v in images.shape[1:]):
            raise InputValidationError(f"tracer takes {self.tracer.input_shape}, images are {tuple(images.shape[1:])}")
        self.tracer_hash = self.tracer.content_hash()  # cached attack sets are only reused for this tracer
        self.info = dict(info or {})
        if {"peer", "field"} & set(config.stages) and train_data is None:
            raise InputValidationError("the peer and field stages need labelled training images")
        self.train_data = train_data
        self._calibrations: dict[tuple[float, int, str], Calibration] = {}

    def _tracer(self, seed: int) -> Tracer:
        """The smooth random tracer (also the control's look-alike when a tracer file is used)."""
        c, h, w = (int(v) for v in self.images.shape[1:])
        return create_tracer("random", length_scale=self.config.length_scale, gain=self.config.gain, seed=seed,
                             num_outputs=self.num_classes, in_channels=c, image_size=(h, w))

    def copyset(self, alpha: float, m: int, tracer: Tracer | None = None) -> CopySet:
        return CopySet(self.classifier, tracer or self.tracer, make_permutations(self.num_classes, m),
                       CopyParams(alpha=alpha, tau=self.config.tau))

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
        cached = ExampleSet.load(path, meta)
        if cached is not None:
            log.info("reusing %s (%d examples)", path, len(cached.sources))
            return cached
        seed = self.config.seed + sum(map(ord, name))  # fresh images per set
        result = attack_sources(attack, self.config.params_for(attack), models, source_ids, per_source,
                                self.images, self.labels, seed)
        result.save(path, meta)
        return result

    # ------------------------------------------------------------------ stages
    def clean_table(self) -> list[dict[str, Any]]:
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

    def tracing_table(self) -> list[dict[str, Any]]:
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
                               "successful": len(ex.sources), "median_l2": _median(ex.l2),
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

    def field_table(self) -> list[dict[str, Any]]:
        """Every regime of field.REGIMES on each attack's examples at the largest alpha."""
        cfg = self.config
        alpha = cfg.alphas[-1]
        copies = self.copyset(alpha, cfg.copies)
        path = self.out_dir / "learned_rule.json"
        meta = {"alpha": alpha, "copies": cfg.copies, "tau": cfg.tau, "tracer": self.tracer_hash,
                "fit_images": cfg.fit_images, "seed": cfg.seed}
        stored = json.loads(path.read_text()) if path.is_file() else None
        if stored is None or stored.get("meta") != meta:
            images, labels = self.train_data  # type: ignore[misc]
            # the last train images: the calibration uses the first ones
            rule = fit_rule(copies, images[-cfg.fit_images:], labels[-cfg.fit_images:], seed=cfg.seed)
            stored = {"meta": meta, "rule": rule}
            atomic_write_text(path, json.dumps(stored))
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

    def scaling_table(self) -> list[dict[str, Any]]:
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

    def control_table(self) -> list[dict[str, Any]]:
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
                                       "median_l2": _median(ex.l2), "rules": {}}
                all_scores = rule_scores(copies, ex.x_adv) if len(ex.sources) else {}
                for rule, scores in all_scores.items():
                    report = trace_scores(scores, rule, self.calibration(alpha, cfg.copies, rule))
                    confidence = confidence_from_false_alarm(report.false_alarm, cfg.copies)
                    entry = {"histogram": torch.bincount(report.predicted, minlength=cfg.copies).tolist(),
                             "confident_share": float((confidence >= CONFIDENT).float().mean()),
                             "median_false_alarm": float(report.false_alarm.median())}
                    if kind == "other tracer":  # same-index "accuracy": the chance level of the null
                        entry["same_index_share"] = float((report.predicted == ex.sources).float().mean())
                    row["rules"][rule] = entry
                rows.append(row)
        return rows

    def collusion_table(self) -> list[dict[str, Any]]:
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
        from safetensors.torch import load_file, save

        from advforensics.tracing.peer import MaskConfig, build_masked_copies

        cfg = self.config
        assert self.train_data is not None
        images, labels = (t[: cfg.peer_train_images] for t in self.train_data)
        mask_config = MaskConfig(finetune_epochs=cfg.peer_epochs, seed=cfg.seed)
        path = self.out_dir / "peer_copies.safetensors"
        if path.is_file():  # same structure with no fine-tuning, then the stored weights
            copies = build_masked_copies(self.classifier, images[:1], labels[:1], cfg.copies,
                                         MaskConfig(finetune_epochs=1, lr=1e-12, seed=cfg.seed))
            copies.load_state_dict(load_file(str(path)))
            return copies.eval()
        copies = build_masked_copies(self.classifier, images, labels, cfg.copies, mask_config)
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in copies.state_dict().items()}))
        return copies

    def peer_table(self) -> dict[str, Any]:
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
                                   "median_l2": _median(ex.l2)}
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

    def run(self) -> dict[str, Any]:
        start = time.time()
        results: dict[str, Any] = {"config": asdict(self.config), "info": self.info}
        stages = {"clean": self.clean_table, "tracing": self.tracing_table, "field": self.field_table,
                  "scaling": self.scaling_table,
                  "controls": self.control_table, "collusion": self.collusion_table, "peer": self.peer_table}
        for name in STAGES:
            if name in self.config.stages:
                log.info("stage %s", name)
                results[name] = stages[name]()
                self._write(results)
        results["robustness_cost"] = robustness_cost(results)
        results["elapsed_s"] = round(time.time() - start, 1)
        self._write(results)
        return results

    def _write(self, results: dict[str, Any]) -> None:
        tmp = self.out_dir / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(self.out_dir / "results.json")


def robustness_cost(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Median L2 of successful examples on the copies vs on C alone, per attack (same attack budget)."""
    rows = []
    for attack in results["config"]["attacks"]:
        on_c = next((r["median_l2"] for r in results.get("controls", [])
                     if r["attack"] == attack and r["control"] == "C alone"), None)
        for r in results.get("tracing", []):
            if r["attack"] == attack:
                ratio = r["median_l2"] / on_c if on_c and r["median_l2"] else None
                rows.append({"attack": attack, "alpha": r["alpha"], "median_l2_copy": r["median_l2"],
                             "median_l2_classifier": on_c, "ratio": ratio})
    return rows


def _median(values: torch.Tensor) -> float | None:
    return float(values.median()) if len(values) else None
