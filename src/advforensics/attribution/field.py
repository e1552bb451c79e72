"""Attribution metrics on any labelled evidence: a corpus split, a held-out corpus made by other code,
re-encoded files, or a user's labels table (issue 11).

`Truth` holds what is known about each row, and `field_metrics` compares it with the answers
(answers.py): every rate comes with its 95% Wilson interval and its count, RMSE with a bootstrap
interval, and the same figures per group (variant, implementation, victim model, strength).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from advforensics.attribution.answers import Attribution, answer
from advforensics.attribution.card import AttributorCard
from advforensics.attribution.corpus import Corpus
from advforensics.attribution.grid import CLEAN, KNOWN_ATTACKS
from advforensics.attribution.openset import NOT_ADVERSARIAL, UNKNOWN
from advforensics.errors import DataFileError, InputValidationError
from advforensics.utils import atomic_write_text, wilson_interval
from advforensics.vocab import Unit

@dataclass
class Truth:
    """What is known about each evidence row: family ("clean" for clean or benign), victim
    architecture ("clean"), strength (NaN where unknown or none), and grouping columns."""

    attack: np.ndarray
    victim: np.ndarray
    hyper: np.ndarray
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.attack)
        if len(self.victim) != n or len(self.hyper) != n or any(len(g) != n for g in self.groups.values()):
            raise InputValidationError("every truth column must have one entry per evidence row")

    def __len__(self) -> int:
        return len(self.attack)

    @classmethod
    def from_corpus(cls, corpus: Corpus, rows: np.ndarray | None = None) -> Truth:
        rows = np.arange(len(corpus)) if rows is None else rows
        c = corpus.columns
        victim_arch = c["victim_arch"][rows].astype(object)
        hyper = c["hyper"][rows].astype(np.float64)
        hyper[np.array([KNOWN_ATTACKS.get(a, Unit.NONE) == Unit.NONE for a in c["attack"][rows]], dtype=bool)] = np.nan
        cell = np.array([f"{a} x {v} x {h:g}" if a != CLEAN else CLEAN
                         for a, v, h in zip(c["attack"][rows], victim_arch, c["hyper"][rows])], dtype=object)
        return cls(attack=c["attack"][rows].astype(object), victim=victim_arch, hyper=hyper,
                   groups={"variant": c["variant"][rows], "implementation": c["implementation"][rows],
                           "victim model": c["victim"][rows], "cell": cell})

    @classmethod
    def from_table(cls, path: str | Path, rows: list[int]) -> Truth:
        """A labels file (CSV or Parquet) with columns attack, victim and optionally strength and row.

        With a `row` column, each evidence row is matched to the labels row of the same index (the
        evidence file's row); without one, the table must have one row per evidence row, in order.
        """
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        source = Path(path)
        try:
            table = pq.read_table(source) if source.suffix.lower() == ".parquet" else pacsv.read_csv(source)
        except (OSError, pa.ArrowException) as error:
            raise DataFileError(f"cannot read labels file {source}: {error}") from None
        missing = {"attack", "victim"} - set(table.column_names)
        if missing:
            raise DataFileError(f"labels file {source} lacks columns {sorted(missing)} (needs attack, victim; "
                                "optional strength, row)")
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        if "row" in cols:
            index = {int(r): i for i, r in enumerate(cols["row"])}
            absent = [r for r in rows if r not in index]
            if absent:
                raise DataFileError(f"labels file {source} has no row {absent[0]} ({len(absent)} evidence rows "
                                    "without labels)")
            take = [index[r] for r in rows]
        else:
            if len(cols["attack"]) != len(rows):
                raise DataFileError(f"labels file {source} has {len(cols['attack'])} rows for {len(rows)} evidence "
                                    "rows; add a 'row' column to match them by index")
            take = list(range(len(rows)))
        attack = np.array([str(cols["attack"][i]).strip() for i in take], dtype=object)
        attack[np.isin(attack, [NOT_ADVERSARIAL, "none", ""])] = CLEAN
        victim = np.array([str(cols["victim"][i]).strip() for i in take], dtype=object)
        victim[attack == CLEAN] = CLEAN
        strength = cols.get("strength")
        hyper = np.array([np.nan if strength is None or strength[i] is None else float(strength[i]) for i in take])
        groups = {name: np.array([cols[name][i] for i in take], dtype=object) for name in cols
                  if name not in ("attack", "victim", "strength", "row")}
        return cls(attack=attack, victim=victim, hyper=hyper, groups=groups)


def _rate(hits: np.ndarray) -> dict[str, Any] | None:
    """{"rate", "low", "high", "hits", "n"} of a boolean array (Wilson 95%); None when empty."""
    n = int(hits.size)
    if n == 0:
        return None
    k = int(hits.sum())
    low, high = wilson_interval(k, n)
    return {"rate": k / n, "low": low, "high": high, "hits": k, "n": n}


def _rmse(pred: np.ndarray, true: np.ndarray, seed: int = 0, resamples: int = 500) -> dict[str, Any] | None:
    """RMSE with a 95% bootstrap interval over rows; None when empty."""
    ok = ~np.isnan(pred) & ~np.isnan(true)
    pred, true = pred[ok], true[ok]
    if len(true) == 0:
        return None
    sq = (pred - true) ** 2
    rng = np.random.default_rng(seed)
    boots = np.sqrt(sq[rng.integers(0, len(sq), (resamples, len(sq)))].mean(axis=1))
    return {"rmse": float(np.sqrt(sq.mean())), "low": float(np.quantile(boots, 0.025)),
            "high": float(np.quantile(boots, 0.975)), "n": int(len(sq))}


def field_metrics(att: Attribution, truth: Truth, group_by: tuple[str, ...] = ("variant", "victim model", "cell")
                  ) -> dict[str, Any]:
    """Open-set attack answers, victim architecture, strength, overall and per group (a "cell" is
    attack family x victim architecture x strength).

    known: rows of a family the attributor knows; unknown families: rows of families it was not
    trained on (the right answer is "unknown attack"); clean: clean and benign rows (the right answer is
    "not adversarial").
    """
    if len(att.attack) != len(truth):
        raise InputValidationError(f"{len(att.attack)} answers for {len(truth)} truth rows")
    answers = np.array(att.attack, dtype=object)
    families = set(att.attack_names) - {CLEAN}
    is_clean = truth.attack == CLEAN
    known = np.array([a in families for a in truth.attack]) & ~is_clean
    unknown = ~known & ~is_clean
    expected = np.where(is_clean, NOT_ADVERSARIAL, np.where(known, truth.attack, UNKNOWN))
    victims = set(att.victim_names) - {CLEAN}
    victim_known = np.array([v in victims for v in truth.victim]) & ~is_clean
    out: dict[str, Any] = {
        "n": len(truth), "n_known": int(known.sum()), "n_unknown_family": int(unknown.sum()),
        "n_clean": int(is_clean.sum()),
        "open_set_accuracy": _rate(answers == expected),
        "attack_accuracy": _rate(answers[known] == truth.attack[known]),
        "false_abstention": _rate(answers[known] == UNKNOWN),
        "adversarial_called_clean": _rate(answers[known | unknown] == NOT_ADVERSARIAL),
        "unknown_called_unknown": _rate(answers[unknown] == UNKNOWN),
        "clean_called_not_adversarial": _rate(answers[is_clean] == NOT_ADVERSARIAL),
        "victim_accuracy": _rate(np.array(att.victim, dtype=object)[victim_known] == truth.victim[victim_known]),
        "rmse": {f: _rmse(att.hyper[known & (truth.attack == f) & (answers == f)],
                          truth.hyper[known & (truth.attack == f) & (answers == f)])
                 for f in sorted(families) if KNOWN_ATTACKS.get(f, Unit.NONE) != Unit.NONE},
    }
    # answer = the true family, and the strength read there; RMSE over rows the family was named on
    out["confident_wrong"] = _rate((answers != expected)[att.attack_probability >= 0.99])
    out["groups"] = {}
    for name in group_by:
        if name not in truth.groups:
            continue
        column = truth.groups[name]
        per = {}
        for value in sorted(set(column.tolist()), key=str):
            m = column == value
            fam = truth.attack[m][0]
            per[str(value)] = {
                "n": int(m.sum()), "expected": str(expected[m][0]) if len(set(expected[m])) == 1 else "mixed",
                "open_set_accuracy": _rate(answers[m] == expected[m]),
                "victim_accuracy": _rate(np.array(att.victim, dtype=object)[m & victim_known]
                                         == truth.victim[m & victim_known]),
                "rmse": _rmse(att.hyper[m & known & (answers == truth.attack)], truth.hyper[m & known
                                                                                          & (answers == truth.attack)])
                if KNOWN_ATTACKS.get(str(fam), Unit.NONE) != Unit.NONE else None}
        out["groups"][name] = per
    return out


def _pct(rate: dict[str, Any] | None) -> str:
    if rate is None:
        return "-"
    return f"{100 * rate['rate']:.1f} [{100 * rate['low']:.1f}, {100 * rate['high']:.1f}] (n={rate['n']})"


def _rm(r: dict[str, Any] | None) -> str:
    return "-" if r is None else f"{r['rmse']:.2f} [{r['low']:.2f}, {r['high']:.2f}] (n={r['n']})"


def summary_row(name: str, m: dict[str, Any]) -> dict[str, Any]:
    """One table row of `field_metrics`: the headline figures with intervals."""
    row = {"evidence": name, "attack (known families)": _pct(m["attack_accuracy"]),
           "victim architecture": _pct(m["victim_accuracy"])}
    for family, r in m["rmse"].items():
        row[f"RMSE {family}"] = _rm(r)
    row.update({"false 'unknown' on known": _pct(m["false_abstention"]),
                "unknown family -> 'unknown'": _pct(m["unknown_called_unknown"]),
                "clean/benign -> 'not adversarial'": _pct(m["clean_called_not_adversarial"]),
                "adversarial -> 'not adversarial'": _pct(m["adversarial_called_clean"]),
                "wrong at p >= 0.99": _pct(m["confident_wrong"])})
    return row


def group_rows(m: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [{group: value, "n": g["n"], "right answer": g["expected"], "answered right": _pct(g["open_set_accuracy"]),
             "victim architecture": _pct(g["victim_accuracy"]), "RMSE": _rm(g["rmse"])}
            for value, g in m.get("groups", {}).get(group, {}).items()]


def field_reports(model: nn.Module, card: AttributorCard, corpus: Corpus, *, split: str = "test",
                  reencodings: tuple[str, ...] = (), heldout: list[tuple[str, Corpus]] = (),
                  scores: tuple[str | None, ...] = (None,)) -> dict[str | None, dict[str, dict[str, Any]]]:
    """field_metrics on the card's split of its corpus, on that split re-encoded, and on held-out
    corpora, for each abstention score (None: the card's); the model runs once per evidence set.

    The split is reproduced from the card on the full corpus: an attributor trained on a subset
    (leave-one-family-out) meets the left-out family's test rows, whose right answer is "unknown".
    """
    from advforensics.attribution.corpus import attribution_splits
    from advforensics.attribution.answers import model_logits
    from advforensics.evidence.transforms import reencode

    parent = card.subset or {}
    if card.corpus_id not in (corpus.corpus_id, None) and parent.get("parent") != corpus.corpus_id:
        raise InputValidationError("the attributor was not trained on this corpus; pass its held-out sets "
                                   "with --heldout instead")
    for name, other in heldout:
        if list(other.image_shape) != list(card.image_shape):
            raise InputValidationError(f"held-out corpus {name} has images {other.image_shape}, the attributor "
                                       f"expects {card.image_shape}")
    s = card.split
    masks = attribution_splits(corpus.columns["clean_index"], s.test_fraction, s.calibration_fraction,
                               s.seed)
    rows = np.flatnonzero(masks[2] if split == "test" else masks[0])
    x = corpus.float_images(rows)
    truth = Truth.from_corpus(corpus, rows)
    sets = [(f"{split} split", lambda: x, truth)]
    sets += [(f"{split} split, {spec}", lambda spec=spec: reencode(x, spec), truth) for spec in reencodings]
    sets += [(name, other.float_images, Truth.from_corpus(other)) for name, other in heldout]
    results: dict[str | None, dict[str, dict[str, Any]]] = {score: {} for score in scores}
    for name, images, rows_truth in sets:
        out = model_logits(model, images())
        for score in scores:
            results[score][name] = field_metrics(answer(out, card, score), rows_truth)
    return results


def field_report(model: nn.Module, card: AttributorCard, corpus: Corpus, *, split: str = "test",
                 reencodings: tuple[str, ...] = (), heldout: list[tuple[str, Corpus]] = (),
                 score: str | None = None) -> dict[str, dict[str, Any]]:
    """`field_reports` for one abstention score."""
    return field_reports(model, card, corpus, split=split, reencodings=reencodings, heldout=heldout,
                         scores=(score,))[score]


def write_field_report(results: dict[str, dict[str, Any]], out_dir: str | Path, title: str) -> list[Path]:
    """field.json and field.md (summary table, then per-variant and per-victim tables per evidence set)."""
    from advforensics.reporting import markdown_table
    from advforensics.utils import write_json

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\nRates in %, [95% Wilson interval], (n rows). RMSE in the family's unit " \
           "(eps in /255, kappa in logits), [95% bootstrap interval], over rows whose family was named.\n\n"
    text += markdown_table([summary_row(name, m) for name, m in results.items()]) + "\n"
    for name, m in results.items():
        for group in m.get("groups", {}):
            text += f"\n## {name}: per {group}\n\n" + markdown_table(group_rows(m, group)) + "\n"
    files = [root / "field.json", root / "field.md"]
    write_json(files[0], results)
    atomic_write_text(files[1], text)
    return files


__all__ = ["Truth", "field_metrics", "field_report", "field_reports", "summary_row", "group_rows",
           "write_field_report"]
