"""Evaluating attributors: accuracy, RMSE (overall and per attack), Delta_MTL, params, FLOPs, confusions.

RMSE is in the grid's units (eps * 255 for FGSM/PGD, kappa for C&W) and is computed over
adversarial rows (the clean class, if any, has no hyperparameter; `rmse_all` includes it at 0).
Delta_MTL = (1/T) sum_k (-1)^{l_k} (M_mtl,k - M_single,k) / M_single,k (Maninis et al. 2019), in %.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from advforensics.attribution.answers import predict_outputs
from advforensics.attribution.card import AttributorCard
from advforensics.attribution.corpus import Corpus, split_by_clean_image
from advforensics.attribution.grid import CLEAN
from advforensics.errors import CheckpointError, InputValidationError
from advforensics.utils import atomic_write_text, module_device, write_json
from advforensics.reporting.attribution_tables import false_alarm_table, results_table
from advforensics.reporting.plots import plot_confusion

#: metric -> lower is better?
MTL_METRICS = {"attack_accuracy": False, "victim_accuracy": False, "rmse": True}


def _confusion(true: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    """(n_classes, n_classes) counts; a subset's split with one class is fine, so sklearn's warning is muted."""
    with warnings.catch_warnings(action="ignore", category=UserWarning):
        return confusion_matrix(true, pred, labels=range(n_classes)).tolist()


def count_flops(model: nn.Module, card: AttributorCard) -> int:
    """Forward FLOPs for one image, counted by torch.utils.flop_counter.FlopCounterMode."""
    c, h, w = card.image_shape
    x = torch.rand(1, int(c), int(h), int(w), device=module_device(model))
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def _rmse(pred: np.ndarray, true: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean((pred - true) ** 2))) if len(true) else None


def evaluate_attributor(model: nn.Module, card: AttributorCard, corpus: Corpus, *, split: str = "test"
                        ) -> dict[str, Any]:
    """Metrics of a trained attributor on the card's split of `corpus` (must be the training corpus).

    An attributor trained on a subset (`Corpus.subset`, recorded in its card) is evaluated on the
    same subset of its parent corpus.
    """
    subset = card.subset
    if subset and corpus.manifest.get("subset") is None and corpus.corpus_id == subset.get("parent"):
        corpus = corpus.subset(subset["attacks"], subset["victims"])
    if card.corpus_id != corpus.corpus_id:
        raise CheckpointError(f"the attributor was trained on corpus {str(card.corpus_id)[:12]}..., "
                              f"not on {corpus.path} ({corpus.corpus_id[:12]}...); evaluate it on its own corpus")
    if list(card.image_shape) != list(corpus.image_shape):
        raise InputValidationError(f"attributor expects images {card.image_shape}, corpus has {corpus.image_shape}")
    if split not in ("train", "test"):
        raise InputValidationError(f"split must be 'train' or 'test', got {split!r}")
    s = card.split
    train_mask, test_mask = split_by_clean_image(corpus.columns["clean_index"], s.test_fraction, s.seed)
    rows = np.flatnonzero(test_mask if split == "test" else train_mask)
    if len(rows) == 0:
        raise InputValidationError("the split holds no examples")
    out = predict_outputs(model, card, corpus.float_images(rows))
    attack_true, victim_true = corpus.attack_targets()[rows], corpus.victim_targets()[rows]
    hyper_true = corpus.hyper_targets()[rows]
    attack_names, victim_names = card.attack_names, card.victim_names
    metrics: dict[str, Any] = {"kind": card.kind, "split": split, "n": int(len(rows)),
                               "n_params": int(sum(p.numel() for p in model.parameters())),
                               "n_trainable_params": int(sum(p.numel() for p in model.parameters()
                                                             if p.requires_grad)),
                               "flops_per_image": count_flops(model, card), "corpus_id": corpus.corpus_id}
    if "attack_probs" in out:
        pred = out["attack_probs"].argmax(1)
        metrics["attack_accuracy"] = float((pred == attack_true).mean())
        metrics["attack_confusion"] = _confusion(attack_true, pred, len(attack_names))
        if CLEAN in attack_names:
            metrics["false_alarm"] = clean_class_rates(pred, attack_true, attack_names)
    if "victim_probs" in out:
        pred = out["victim_probs"].argmax(1)
        metrics["victim_accuracy"] = float((pred == victim_true).mean())
        adv = np.array([corpus.columns["attack"][r] != CLEAN for r in rows])
        metrics["victim_accuracy_adversarial"] = float((pred[adv] == victim_true[adv]).mean()) if adv.any() else None
        metrics["victim_confusion"] = _confusion(victim_true, pred, len(victim_names))
    if "hyper" in out:
        attacks = corpus.columns["attack"][rows]
        adv = attacks != CLEAN
        metrics["rmse"] = _rmse(out["hyper"][adv], hyper_true[adv])
        metrics["rmse_all"] = _rmse(out["hyper"], hyper_true)
        metrics["rmse_per_attack"] = {a: _rmse(out["hyper"][attacks == a], hyper_true[attacks == a])
                                      for a in attack_names if a != CLEAN and (attacks == a).any()}
        metrics["mae"] = float(np.mean(np.abs(out["hyper"][adv] - hyper_true[adv]))) if adv.any() else None
    metrics["attack_names"], metrics["victim_names"] = attack_names, victim_names
    return metrics


def clean_class_rates(pred: np.ndarray, true: np.ndarray, attack_names: list[str]) -> dict[str, Any]:
    """How the attack head treats the clean class: clean images called attacked (false alarms) and
    adversarial examples called clean (misses), overall and per true attack."""
    clean = attack_names.index(CLEAN)
    is_clean = true == clean

    def rate(mask: np.ndarray) -> float | None:
        return float(mask.mean()) if mask.size else None

    return {"n_clean": int(is_clean.sum()), "n_adversarial": int((~is_clean).sum()),
            "false_alarm_rate": rate(pred[is_clean] != clean),
            "clean_recognised_rate": rate(pred[is_clean] == clean),
            "missed_rate": rate(pred[~is_clean] == clean),
            "missed_per_attack": {name: rate(pred[true == i] == clean) for i, name in enumerate(attack_names)
                                  if name != CLEAN and (true == i).any()}}


def delta_mtl(mtl: dict[str, Any], single: dict[str, dict[str, Any]]) -> float:
    """Delta_MTL in percent; `single` maps metric name -> metrics of the single-task model for it."""
    terms = []
    for metric, lower_better in MTL_METRICS.items():
        if metric not in single or mtl.get(metric) is None or single[metric].get(metric) in (None, 0):
            raise InputValidationError(f"Delta_MTL needs {metric} from the MTL model and its single-task model")
        ref = float(single[metric][metric])
        diff = (float(mtl[metric]) - ref) / ref
        terms.append(-diff if lower_better else diff)
    return 100.0 * float(np.mean(terms))


def write_report(metrics: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """metrics.json, report.md and confusion PNGs in `out_dir`; returns the files written."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    files = [root / "metrics.json", root / "report.md"]
    write_json(files[0], metrics)
    text = f"# Attribution evaluation ({metrics['kind']}, {metrics['split']} split, n={metrics['n']})\n\n"
    text += results_table([metrics])
    if metrics.get("delta_mtl") is not None:
        text += f"\nDelta_MTL vs single-task: {metrics['delta_mtl']:+.2f}%\n"
    if metrics.get("false_alarm"):
        text += "\n## Clean class (false alarms)\n\n" + false_alarm_table([metrics])
    for key, names in (("attack_confusion", "attack_names"), ("victim_confusion", "victim_names")):
        if key in metrics:
            path = root / f"{key}.png"
            plot_confusion(metrics[key], metrics[names], key.replace("_", " "), path)
            files.append(path)
            text += f"\n![{key}]({path.name})\n"
    atomic_write_text(root / "report.md", text)
    return files


__all__ = ["evaluate_attributor", "count_flops", "delta_mtl", "write_report",
           "clean_class_rates", "evaluate_files", "MTL_METRICS"]


def evaluate_files(corpus_dir: str | Path, model_path: str | Path, out: str | Path, split: str = "test",
                   single_task: Sequence[str | Path] = (), heldout: Sequence[str | Path] = (),
                   reencodings: Sequence[str] = (), device: str | torch.device = "cpu") -> dict[str, Any]:
    """`attribution evaluate`: the paper's tables for an attributor file on a corpus's split (with
    Delta_MTL against single-task files), written to `out`; for an open-set attributor also the field
    report (field.md) on the split, its re-encodings and every held-out corpus. Every input is read and
    verified before any work."""
    from advforensics.attribution.corpus import load_corpus
    from advforensics.attribution.card import load_attributor
    from advforensics.evidence.transforms import check_reencoding
    from advforensics.utils import resolve_device

    target = resolve_device(device)
    for spec in reencodings:
        check_reencoding(spec)
    corpus = load_corpus(corpus_dir)
    heldout_corpora = [(Path(path).name, load_corpus(path)) for path in heldout]
    model, card = load_attributor(model_path)
    metrics = evaluate_attributor(model.to(target), card, corpus, split=split)
    if single_task:
        single = {}
        for path in single_task:
            m, c = load_attributor(path)
            task_metrics = evaluate_attributor(m.to(target), c, corpus, split=split)
            for metric in ("attack_accuracy", "victim_accuracy", "rmse"):
                if metric in task_metrics and len(c.config["tasks"]) == 1:
                    single[metric] = task_metrics
        metrics["delta_mtl"] = delta_mtl(metrics, single)
    write_report(metrics, out)
    if card.open_set is not None:
        from advforensics.attribution.field import field_report, write_field_report

        field = field_report(model, card, corpus, split=split, reencodings=reencodings, heldout=heldout_corpora)
        write_field_report(field, out, f"Attribution in the field ({card.kind}, {Path(model_path).name})")
        metrics["field"] = field
    return metrics
