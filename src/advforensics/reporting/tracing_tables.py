"""Markdown tables and plots of tracing results: the tracing study's results.json (studies/tracing.py)
and the field study's regime and control rows (tracing/field.py), rendered from the numbers alone; the
figures themselves are drawn by advforensics.reporting.plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from advforensics.reporting.plots import plot_accuracy_vs_copies, plot_score_histograms
from advforensics.reporting.tables import markdown_table
from advforensics.vocab import ScoreRule

FORMULA_RULES = ScoreRule.formula_values()
RULES = ScoreRule.values()  # the formula rules, then "learned"


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _per_source(values: list[float | None]) -> str:
    return " / ".join("-" if v is None else f"{100 * v:.1f}" for v in values)


def markdown_report(results: dict[str, Any]) -> str:
    cfg = results["config"]
    main = cfg["main_rule"]
    tracer = (f"tracer {cfg['tracer_file']}" if cfg.get("tracer_file") else
              f"random tracer (l = {cfg['length_scale']}, g = {cfg['gain']})")
    parts = [f"# Tracing experiment\n\nCopies: {cfg['copies']}, tau {cfg['tau']}, {tracer}, seed {cfg['seed']}. "
             f"Main score rule: {main}. Accuracies in %."]

    clean = results.get("clean", [])
    if clean:
        rows = [{"alpha": f"{r['alpha']:g}", "C": _pct(r["classifier"]),
                 "copies (min / mean / max)": "-" if not r["copies"] else
                 f"{100 * min(r['copies']):.2f} / {100 * sum(r['copies']) / len(r['copies']):.2f} / "
                 f"{100 * max(r['copies']):.2f}",
                 "worst cost (points)": r.get("worst_cost_points")} for r in clean]
        parts.append("## Table 1: clean accuracy vs alpha\n\n" + markdown_table(rows))

    tracing = results.get("tracing", [])
    if tracing:
        rows = []
        for r in tracing:
            row = {"attack": r["attack"], "alpha": f"{r['alpha']:g}", "successful / attacked": f"{r['successful']} / {r['attacked']}"}
            for rule in FORMULA_RULES:
                metrics = r.get("rules", {}).get(rule)
                row[rule] = None if metrics is None else (
                    f"{100 * metrics['accuracy']:.1f} [{100 * metrics['ci95'][0]:.1f}, {100 * metrics['ci95'][1]:.1f}]")
            row["C fooled"] = _pct(r.get("c_fooled"))
            row["median L2"] = r.get("median_l2")
            row["mean queries"] = r.get("mean_queries")
            rows.append(row)
        parts.append("## Table 2: tracing accuracy per attack x alpha [95% Wilson interval]\n\n" + markdown_table(rows))
        detail = []
        for r in tracing:
            for rule in FORMULA_RULES:
                metrics = r.get("rules", {}).get(rule)
                if metrics is None:
                    continue
                detail.append({"attack": r["attack"], "alpha": f"{r['alpha']:g}", "rule": rule,
                               "per source": _per_source(metrics["per_source"]),
                               "worst source": _pct(min(v for v in metrics["per_source"] if v is not None)),
                               "histogram": str(metrics["histogram"]),
                               "3 pooled": _pct(metrics["pooled3_accuracy"]),
                               "confident": _pct(metrics.get("confident_share")),
                               "confident & wrong": metrics.get("confident_wrong")})
        parts.append("### Per source, prediction histogram, pooled evidence, confident accusations\n\n"
                     + markdown_table(detail, digits=1))
        ks = [{"attack": r["attack"], "alpha": f"{r['alpha']:g}", "rule": rule,
               "D source vs innocent": r["ks"][rule]["source_vs_innocent"],
               "D innocent vs innocent": r["ks"][rule]["innocent_vs_innocent"]}
              for r in tracing if "ks" in r for rule in FORMULA_RULES]
        parts.append("## Table 3: Kolmogorov-Smirnov D of the scores\n\n" + markdown_table(ks, digits=3))
    if results.get("field"):
        parts.append("## Field: attacker behaviours and re-encodings (largest alpha; accuracy in % on the rows "
                     "that still fool their copy; the learned rule was fitted on simulated attackers only)\n\n"
                     + regime_table(results["field"]))
    if tracing:
        transfer = []
        for r in tracing:
            if "transfer" not in r:
                continue
            for i, line in enumerate(r["transfer"]):
                transfer.append({"attack": r["attack"], "alpha": f"{r['alpha']:g}", "source": i,
                                 **{f"fools copy {j}": _pct(v) for j, v in enumerate(line)}})
        parts.append("## Table 5: transfer between copies (% of examples from the source that fool copy j)\n\n"
                     + markdown_table(transfer, digits=1) + "\n\n"
                     + markdown_table([{"attack": r["attack"], "alpha": f"{r['alpha']:g}",
                                        "examples fooling another copy": r.get("transfer_examples"),
                                        f"traced ({main})": _pct(r.get("transfer_accuracy"))}
                                       for r in tracing], digits=1))

    scaling = results.get("scaling", [])
    if scaling:
        rows = [{"copies": r["copies"], "examples": r["examples"], "chance": _pct(r["chance"]),
                 **{rule: _pct(r["rules"][rule]["accuracy"]) for rule in FORMULA_RULES}} for r in scaling]
        parts.append(f"## Fig. 4b: accuracy vs number of copies ({cfg['scaling_attack']}, alpha {cfg['alphas'][-1]})\n\n"
                     + markdown_table(rows, digits=1))

    controls = results.get("controls", [])
    if controls:
        rows = []
        for r in controls:
            for rule, entry in r["rules"].items():
                rows.append({"attack": r["attack"], "control": r["control"], "rule": rule,
                             "examples": r["successful"], "histogram": str(entry["histogram"]),
                             "same-index share": _pct(entry.get("same_index_share")),
                             "confident accusations": _pct(entry["confident_share"]),
                             "median false-alarm rate": entry["median_false_alarm"]})
        parts.append("## Controls: examples not made on these copies, traced with them\n\n"
                     + markdown_table(rows, digits=2))
    collusion = results.get("collusion", [])
    if collusion:
        rows = [{"attack": r["attack"], "rule": rule, "examples": r["successful"],
                 "named copy 0": _pct(e["named_0"]), "named copy 1": _pct(e["named_1"]),
                 "named a colluder": _pct(e["named_a_colluder"]), "top 2 = both colluders": _pct(e["top2_both"])}
                for r in collusion for rule, e in r["rules"].items()]
        parts.append("## Table 6: two colluding buyers (copies 0 and 1) pool their queries\n\n"
                     + markdown_table(rows, digits=1))
    peer = results.get("peer")
    if peer:
        ours = {r["attack"]: r for r in tracing if r.get("alpha") == cfg["alphas"][-1]}
        rows = []
        for r in peer["rows"]:
            mine = ours.get(r["attack"], {}).get("rules", {}).get(main)
            rows.append({"attack": r["attack"], "peer examples": r["successful"],
                         "peer accuracy": None if "accuracy" not in r else
                         f"{100 * r['accuracy']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]",
                         "peer per source": _per_source(r.get("per_source", [])),
                         "peer median L2": r["median_l2"],
                         f"ours ({main}, alpha {cfg['alphas'][-1]:g})": None if mine is None else
                         f"{100 * mine['accuracy']:.1f} [{100 * mine['ci95'][0]:.1f}, {100 * mine['ci95'][1]:.1f}]"})
        acc = peer["clean_accuracy"]
        parts.append(f"## Peer scheme: Cheng et al. random-mask copies ({peer['mask_size']} masked inputs per copy), "
                     "same C, attacks and budgets\n\nPeer copies' clean accuracy: "
                     + " / ".join(f"{100 * a:.2f}" for a in acc)
                     + ". The peer score also uses the clean image; ours uses the example alone.\n\n"
                     + markdown_table(rows, digits=3))
    if results.get("robustness_cost"):
        parts.append("## Robustness cost: median L2 to fool a copy vs C alone\n\n"
                     + markdown_table(results["robustness_cost"], digits=3))
    return "\n\n".join(parts) + "\n"


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Fig. 4a (score histograms, source vs innocent copies) and Fig. 4b (accuracy vs copies)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results.get("tracing", []):
        if "scores" not in r:
            continue
        written.append(plot_score_histograms({rule: r["scores"][rule] for rule in FORMULA_RULES},
                                             f"{r['attack']}, alpha {r['alpha']:g}",
                                             out_dir / f"fig4a_{r['attack']}_a{r['alpha']}.png"))
    scaling = results.get("scaling", [])
    if scaling:
        written.append(plot_accuracy_vs_copies(
            [r["copies"] for r in scaling],
            {rule: [r["rules"][rule]["accuracy"] for r in scaling] for rule in FORMULA_RULES},
            [r["chance"] for r in scaling], out_dir / "fig4b_accuracy_vs_copies.png"))
    return written


def _pct1(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def regime_table(rows: list[dict[str, Any]], roles: dict[str, str] | None = None) -> str:
    """Markdown: one line per evidence x regime, accuracy (%) of every rule on the traced rows, the
    learned rule's interval, pooled-5 accuracy, accusations, "none" answers, and the accuracy on the
    rows that still fool some copy."""
    roles = roles or {}
    out = []
    for r in rows:
        learned = r["rules"].get("learned", {})
        tag = f" ({roles[r['evidence']]})" if r["evidence"] in roles else ""
        out.append({
            "evidence": r["evidence"] + tag, "regime": r["regime"], "traced / crafted": f"{r['n']}/{r['attacked']}",
            "fools own / another": f"{_pct1(r['still_fools_source'])} / {_pct1(r['fools_another'])}",
            **{rule: _pct1(r["rules"][rule]["accuracy"]) if rule in r["rules"] else "-" for rule in RULES},
            "learned 95% CI": "[{:.1f}, {:.1f}]".format(*(100 * v for v in learned["ci95"])) if learned else "-",
            "learned pooled 5": _pct1(learned.get("pooled5_accuracy")),
            "accused >= 0.99 (wrong)": f"{_pct1(learned.get('confident_share'))} ({learned.get('confident_wrong')})"
            if learned else "-",
            "none": _pct1(r["none_share"]) if learned else "-",
            "still fooling a copy: n, proximity / learned": f"{r['still_fooling']}: "
            f"{_pct1(r['still_fooling_accuracy'].get('proximity'))} / {_pct1(r['still_fooling_accuracy'].get('learned'))}"})
    return markdown_table(out)


def control_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: share of control examples accused at >= 0.99, per example and over pooled groups of 10."""
    return markdown_table([{"control": r["evidence"], "n": r["n"],
                            **{f"{rule} accused": _pct1(r["confident"].get(rule)) for rule in RULES},
                            **{f"{rule} pooled-10 accused": _pct1(r["pooled10_confident"].get(rule)) for rule in RULES},
                            "learned: none": _pct1(r["none_share"])} for r in rows])
