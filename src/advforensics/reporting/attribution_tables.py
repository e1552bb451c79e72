"""Markdown tables of attribution results, from the numbers alone: one row per evaluated model
(accuracies, RMSE, parameters, FLOPs), the clean class's false alarms, and a corpus's success and
throughput per grid cell (from its manifest)."""

from __future__ import annotations

from typing import Any

from advforensics.reporting.tables import markdown_table


def results_table(rows: list[dict[str, Any]]) -> str:
    """One row per evaluated model: name, attack %, victim %, RMSE, per-attack RMSE, params (all, and
    trained), FLOPs."""

    def percent(value: float | None) -> float | None:
        return None if value is None else 100 * value

    table = [{"model": r.get("name", r["kind"]),
              "attack acc (%)": percent(r.get("attack_accuracy")),
              "victim acc (%)": percent(r.get("victim_accuracy")),
              "RMSE": r.get("rmse"),
              "RMSE per attack": ", ".join(f"{k} {v:.2f}" for k, v in (r.get("rmse_per_attack") or {}).items()
                                           if v is not None) or None,
              "params": f"{r['n_params']:,}",
              "trained params": f"{r.get('n_trainable_params', r['n_params']):,}",  # a probe's victims are frozen
              "FLOPs/image": f"{r['flops_per_image']:,}"} for r in rows]
    return markdown_table(table) + "\n"


def false_alarm_table(rows: list[dict[str, Any]]) -> str:
    """One row per model evaluated on a corpus with a clean class: clean images called attacked,
    adversarial examples called clean (overall and per attack), next to the usual accuracies."""

    def percent(value: float | None) -> str | None:
        return None if value is None else f"{100 * value:.2f}"

    table = []
    for r in rows:
        rates = r.get("false_alarm") or {}
        table.append({"model": r.get("name", r["kind"]), "clean images": rates.get("n_clean"),
                      "false alarms (%)": percent(rates.get("false_alarm_rate")),
                      "adversarial called clean (%)": percent(rates.get("missed_rate")),
                      "per attack": ", ".join(f"{k} {100 * v:.1f}" for k, v in
                                              (rates.get("missed_per_attack") or {}).items() if v is not None) or None,
                      "attack acc (%)": percent(r.get("attack_accuracy")),
                      "victim acc (%)": percent(r.get("victim_accuracy")), "RMSE": r.get("rmse")})
    return markdown_table(table) + "\n"


def corpus_report(manifest: dict[str, Any]) -> str:
    """Success per grid cell (victims x values, per attack; C&W also the share that reached kappa) and
    generation throughput per victim x attack."""
    cells, victims = manifest["cells"], manifest["victims"]
    parts = []
    for spec in manifest["grid"]["attacks"]:
        cw = spec["name"] == "cw-l2"
        rows = []
        for victim in victims:
            by_value = {c["hyper"]: c for c in cells if c["victim"] == victim and c["attack"] == spec["name"]}
            row: dict[str, Any] = {"victim": victim}
            for v in spec["values"]:
                c = by_value.get(v)
                if c is None:
                    row[f"{v:g}"] = "-"
                    continue
                row[f"{v:g}"] = f"{100 * c['success_rate']:.0f}" + (
                    f" ({100 * c['reached'] / c['attempted']:.0f})" if cw and c["attempted"] else "")
            rows.append(row)
        title = f"## {spec['name']}: success (%)" + (", reached kappa (%) in brackets" if cw else "")
        parts.append(title + "\n\n" + markdown_table(rows))
    names = [spec["name"] for spec in manifest["grid"]["attacks"]]
    throughput = [{"victim": victim, **{t["attack"]: t["images_per_s"] for t in manifest["throughput"]
                                         if t["victim"] == victim and t["attack"] in names}} for victim in victims]
    n = sum(int(e["n_examples"]) for e in manifest["units"].values())
    seconds = sum(float(e.get("seconds", 0.0)) for e in manifest["units"].values())
    parts.append("## Throughput (attacked images x hyperparameter values per second, 8-bit re-check included)\n\n"
                 + markdown_table(throughput, digits=1) + f"\n{n} examples, {seconds:.0f} s of generation summed "
                 "over units")
    return "\n\n".join(parts)


__all__ = ["corpus_report", "false_alarm_table", "results_table"]
