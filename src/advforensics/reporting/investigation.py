"""The investigation report (`advforensics investigate`): one payload rendered as HTML and as Markdown.

The payload is `Investigation.to_dict()` (format "advforensics-investigation/1"); its JSON form is the
payload itself. The HTML page is self-contained so that it can travel as one file of evidence: inline
CSS, no script, no network reference (images are `data:` URLs), and a Content-Security-Policy that
forbids anything else, so that even a string that slipped past escaping could not load or run
anything. Every string from the payload is escaped: names come from the user's files.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

from advforensics.reporting.tables import format_cell, markdown_table
from advforensics.vocab import Answer

FORMAT = "advforensics-investigation/1"
# Attack values that are verdicts rather than attack families (attribution/openset.py's answers, from the
# torch-free vocabulary so that reporting imports nothing heavy).
NOT_FAMILIES = Answer.values()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_RECORD = "Tracing not run: no seller record was given (--record)."
NO_PER_COPY = "This tracing rule gives no per-copy pooled confidence."
NO_ATTRIBUTOR = "Attribution not run: no attributor was given (--attributor)."
# Tracing confidences sit near accusation thresholds such as 0.99: two digits would show 0.999 as 1.00.
TRACE_DIGITS = 4
# How many attack probabilities the Markdown table lists per row (the HTML shows them all as bars).
MD_TOP_ATTACKS = 3

Payload = Mapping[str, Any]
ImagePair = tuple[bytes, bytes | None]  # (thumbnail PNG, heat-map PNG or None)
MD_ATTRIBUTION = ["attack", "p(attack)", "victim", "p(victim)", "strength", "attack probabilities"]
MD_TRACING = ["traced copy", "confidence", "accused"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
  padding:0 1rem;color:#1d2330;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.3rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d5d9e0}
.verdict{font-size:1.08rem;background:#f2f5fa;border-left:4px solid #3867d6;padding:.6rem .9rem}
.summary{display:flex;flex-wrap:wrap;gap:.4rem 1.6rem;padding:0;list-style:none}
.summary b{font-variant-numeric:tabular-nums}
.caveats li{margin:.2rem 0}.none{color:#6b7280;font-style:italic}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{border:1px solid #d5d9e0;padding:.3rem .45rem;vertical-align:top;text-align:left}
th{background:#f2f5fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
img.px{width:64px;height:auto;image-rendering:pixelated;display:block}
.bar{background:#e8ebf1;height:.7rem;width:140px;position:relative;display:inline-block;vertical-align:middle}
.bar>span{background:#3867d6;height:100%;display:block}
.bar.small{width:80px;height:.55rem}.bar>i{position:absolute;top:-2px;bottom:-2px;width:2px;background:#d63838}
.bar.nf>span{background:#8a94a6}.accused{color:#b3261e;font-weight:600}
.probs{margin-top:.3rem;font-size:.75rem;line-height:1.15}.probs div{white-space:nowrap}
table.copies{width:auto;min-width:28rem}table.copies td{padding:.1rem .45rem}tr.hit td{background:#fdecea}
.legend{font-size:.8rem;color:#6b7280}
.probs .lbl{display:inline-block;width:7.5rem;overflow:hidden;text-overflow:ellipsis;vertical-align:middle}
em.nf{color:#555}code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;word-break:break-all}
svg.spark rect{fill:#b8c2d6}svg.spark rect.hit{fill:#b3261e}
"""


def _e(value: Any) -> str:
    """Escape any payload value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _unit(value: float | None) -> float:
    """Clamp a probability or confidence to [0, 1] for a bar width (a bad value must not break layout)."""
    return 0.0 if value is None else min(max(float(value), 0.0), 1.0)


def _bar(value: float | None, css: str = "", marker: float | None = None) -> str:
    """A CSS bar of a [0, 1] value; `marker` draws a tick (e.g. a copy's null level)."""
    tick = "" if marker is None else f'<i style="left:{_unit(marker) * 100:.1f}%"></i>'
    return (f'<span class="bar {css}" title="{_num(value)}"><span style="width:{_unit(value) * 100:.1f}%">'
            f"</span>{tick}</span>")


def _png_data_url(data: bytes) -> str:
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("images: every thumbnail and heat map must be PNG bytes")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(data: bytes | None, alt: str) -> str:
    return '<span class="none">-</span>' if data is None else \
        f'<img class="px" src="{_png_data_url(data)}" alt="{_e(alt)}">'


def _attack_label(attack: str) -> str:
    """An attack family in bold; 'not adversarial' / 'unknown attack' as a verdict in italics."""
    return f'<em class="nf">{_e(attack)}</em>' if attack in NOT_FAMILIES else f"<b>{_e(attack)}</b>"


def _sorted_probs(probs: Mapping[str, float]) -> list[tuple[str, float]]:
    return sorted(probs.items(), key=lambda item: (-item[1], item[0]))


# ---------------------------------------------------------------- HTML sections

def _html_summary(summary: Payload) -> str:
    def counts(mapping: Mapping[str, int] | None) -> str:
        return ", ".join(f"{_e(k)} {int(v)}" for k, v in (mapping or {}).items()) or "none"

    items = [("examples", summary.get("n_examples")), ("attacked", summary.get("attacked")),
             (Answer.NOT_ADVERSARIAL.value, summary.get("not_adversarial")),
             (Answer.UNKNOWN.value, summary.get("unknown"))]
    parts = [f"<li>{label}: <b>{_e('-' if v is None else v)}</b></li>" for label, v in items]
    parts += [f"<li>attacks: {counts(summary.get('attacks'))}</li>",
              f"<li>victims: {counts(summary.get('victims'))}</li>"]
    if summary.get("trace_confidence") is not None:  # tracing ran
        copy = summary.get("traced_copy")
        parts.append(f"<li>traced copy: <b>{'none of these copies' if copy is None else _e(copy)}</b> "
                     f"(confidence {_num(summary['trace_confidence'], TRACE_DIGITS)}"
                     f"{', accused' if summary.get('trace_accused') else ', not accused'})</li>")
    if summary.get("one_source") is not None:
        parts.append(f"<li>one source: <b>{'yes' if summary['one_source'] else 'no'}</b></li>")
    return '<ul class="summary">' + "".join(parts) + "</ul>"


def _html_caveats(caveats: Sequence[str]) -> str:
    if not caveats:
        return '<h2>Caveats</h2><p class="none">none</p>'
    return '<h2>Caveats</h2><ul class="caveats">' + "".join(f"<li>{_e(c)}</li>" for c in caveats) + "</ul>"


def _traced(payload: Payload) -> bool:
    """Whether tracing ran: its summary fields are None without a record."""
    summary = payload.get("summary") or {}
    return summary.get("trace_accused") is not None or summary.get("trace_confidence") is not None


def _html_copies(copies: Sequence[Payload] | None, traced: bool) -> str:
    head = "<h2>Tracing: copies</h2>"
    if copies is None:
        return head + f'<p class="none">{NO_PER_COPY if traced else NO_RECORD}</p>'
    if not copies:
        return head + '<p class="none">The record holds no copies.</p>'
    # The schema may carry a per-copy null level ("null_confidence"); the bar marks it when present.
    has_null = any(c.get("null_confidence") is not None for c in copies)
    rows = []
    for c in copies:
        accused = int(c.get("accused_examples") or 0)
        null = c.get("null_confidence")
        hit = ' hit' if accused else ''
        rows.append(f'<tr class="copy-row{hit}" data-copy="{int(c["copy"])}">'
                    f'<td class="num">{_e(c["copy"])}</td>'
                    f'<td>{_bar(c["pooled_confidence"], marker=null)} {_num(c["pooled_confidence"], TRACE_DIGITS)}</td>'
                    + (f'<td class="num">{_num(null, TRACE_DIGITS)}</td>' if has_null else "")
                    + f'<td class="num{" accused" if accused else ""}">{accused}</td></tr>')
    null_th = "<th>null</th>" if has_null else ""
    legend = ('<p class="legend">Red tick: the null level, which an innocent copy\'s pooled confidence exceeds at '
              'most 1% of the time however the examples depend on each other. Shaded: copies with accused '
              'examples.</p>') \
        if has_null else '<p class="legend">Shaded: copies with accused examples.</p>'
    return (head + f'<table class="copies"><thead><tr><th>copy</th><th>pooled confidence</th>{null_th}'
            f"<th>accused examples</th></tr></thead><tbody>{''.join(rows)}</tbody></table>" + legend)


def _html_attribution(att: Payload | None) -> str:
    if att is None:
        return '<span class="none">not run</span>'
    strength = att.get("strength")
    lines = [f"{_attack_label(att['attack'])} {_num(att.get('attack_probability'))}"]
    if att["attack"] not in NOT_FAMILIES:
        victim = att.get("victim")
        lines.append(f"victim: {'unknown' if victim is None else _e(victim)} {_num(att.get('victim_probability'))}")
        unit = _e(att.get("strength_unit", ""))
        lines.append("strength: " + ("-" if strength is None else f"{strength:.3g} {unit}"))
    bars = "".join(
        f'<div><span class="lbl" title="{_e(name)}">{_e(name)}</span>'
        f'{_bar(p, "small nf" if name in NOT_FAMILIES else "small")} {_num(p)}</div>'
        for name, p in _sorted_probs(att.get("attack_probabilities") or {}))
    return "<br>".join(lines) + (f'<div class="probs">{bars}</div>' if bars else "")


def _spark(values: Sequence[float], hit: int | None) -> str:
    """An inline SVG bar per copy (its confidence for this example); the traced copy in red."""
    if not values:
        return ""
    width = max(2.0, min(8.0, 120.0 / len(values)))
    hit_class = ' class="hit"'
    rects = "".join(
        f'<rect{hit_class if i == hit else ""} x="{i * width:.1f}" y="{20 * (1 - _unit(v)):.1f}"'
        f' width="{width * 0.8:.1f}" height="{20 * _unit(v):.1f}"/>'
        for i, v in enumerate(values))
    return (f'<svg class="spark" width="{len(values) * width:.0f}" height="20" role="img" '
            f'aria-label="confidence per copy">{rects}</svg>')


def _html_tracing(tr: Payload | None) -> str:
    if tr is None:
        return '<span class="none">not run</span>'
    copy = tr.get("copy")
    who = "none of these copies" if copy is None else f"copy {_e(copy)}"
    accused = '<span class="accused">accused</span>' if tr.get("accused") else "not accused"
    return (f"{who}<br>confidence {_num(tr.get('confidence'), TRACE_DIGITS)}<br>{accused}<br>"
            + _spark(tr.get("copy_confidences") or [], copy))


def _html_row(example: Payload, pair: ImagePair, show_att: bool, show_tr: bool) -> str:
    row = int(example["row"])  # an int, so the attribute cannot carry markup
    thumb, heat = pair
    caveats = example.get("caveats") or []
    cells = [f'<td class="num">{row}</td>', f'<td>{_e(example["name"])}</td>',
             f"<td>{_img(thumb, f'row {row}')}</td>", f"<td>{_img(heat, f'heat map of row {row}')}</td>"]
    if show_att:
        cells.append(f"<td>{_html_attribution(example.get('attribution'))}</td>")
    if show_tr:
        cells.append(f"<td>{_html_tracing(example.get('tracing'))}</td>")
    cells.append("<td>" + ("<br>".join(_e(c) for c in caveats) or '<span class="none">none</span>') + "</td>")
    return f'<tr class="example-row" data-row="{row}">{"".join(cells)}</tr>'


def _html_examples(examples: Sequence[Payload], images: Sequence[ImagePair]) -> str:
    show_att = any(e.get("attribution") is not None for e in examples)
    show_tr = any(e.get("tracing") is not None for e in examples)
    notes = ([] if show_att else [f'<p class="none">{NO_ATTRIBUTOR}</p>']) \
        + ([] if show_tr else [f'<p class="none">{NO_RECORD}</p>'])
    heads = ["row", "name", "image", "heat map"] + (["attribution"] if show_att else []) \
        + (["traced copy"] if show_tr else []) + ["caveats"]
    body = "".join(_html_row(e, p, show_att, show_tr) for e, p in zip(examples, images))
    return (f"<h2>Examples ({len(examples)})</h2>" + "".join(notes)
            + "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr></thead>"
            + f"<tbody>{body}</tbody></table>")


def _queries_rows(queries: Payload) -> list[dict[str, Any]]:
    """One row per buyer of the query log, flagged ones first (the same rows in HTML and Markdown)."""
    buyers = sorted(queries.get("buyers") or [], key=lambda b: (b.get("flagged_at") is None, str(b["buyer"])))
    return [{"buyer": b["buyer"], "copy": b.get("copy"), "queries": b.get("queries"), "hits": b.get("hits"),
             "flagged at query": b.get("flagged_at"),
             "verdict": "attack in progress" if b.get("flagged_at") is not None else "benign",
             "attack family": None if b.get("family") is None else
             f"{b['family']} ({_num(b.get('family_probability'))})"} for b in buyers]


QUERY_COLUMNS = ["buyer", "copy", "queries", "hits", "flagged at query", "verdict", "attack family"]


def _html_queries(queries: Payload | None) -> str:
    if queries is None:
        return ""
    rows = "".join("<tr" + (' class="hit"' if r["verdict"] != "benign" else "") + ">"
                   + "".join(f"<td>{_e('-' if r[c] is None else r[c])}</td>" for c in QUERY_COLUMNS) + "</tr>"
                   for r in _queries_rows(queries))
    head = "".join(f"<th>{_e(c)}</th>" for c in QUERY_COLUMNS)
    return (f'<h2>Query log</h2><p>{_e(queries.get("verdict", ""))}</p>'
            f'<table class="queries"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')


def _md_queries(queries: Payload | None) -> str:
    if queries is None:
        return ""
    rows = [{c: _md(v) if isinstance(v, str) else v for c, v in r.items()} for r in _queries_rows(queries)]
    return f"## Query log\n\n{_md(queries.get('verdict', ''))}\n\n{markdown_table(rows, QUERY_COLUMNS)}\n\n"


def _html_custody(custody: Payload) -> str:
    files = "".join(f'<tr><td class="hash">{_e(f["path"])}</td><td>{_e(f["role"])}</td>'
                    f'<td class="hash">{_e(f["sha256"])}</td></tr>' for f in custody.get("files") or [])
    table = (f"<table><thead><tr><th>file</th><th>role</th><th>sha256</th></tr></thead><tbody>{files}</tbody>"
             "</table>") if files else '<p class="none">no files</p>'
    return ("<h2>Chain of custody</h2><ul>"
            f"<li>tool: {_e(custody.get('tool', '-'))}</li>"
            f"<li>command: <code>{_e(custody.get('command', '-'))}</code></li>"
            f"<li>time: {_e(custody.get('time', '-'))}</li></ul>" + table)


def render_html(payload: Payload, images: Sequence[ImagePair]) -> str:
    """The payload as one self-contained HTML5 page; `images[i]` = (thumbnail PNG, heat-map PNG or None)
    for `payload["examples"][i]`."""
    examples = payload["examples"]
    if len(images) != len(examples):
        raise ValueError(f"images: {len(images)} image pairs for {len(examples)} examples")
    title = _e(payload.get("title") or "Investigation report")
    # default-src 'none': no script, font, frame or fetch; images only as data: URLs, style only inline.
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_CSS}</style></head><body>"
            f'<h1>{title}</h1><p class="verdict">{_e(payload.get("verdict", ""))}</p>'
            + _html_summary(payload.get("summary") or {})
            + _html_caveats(payload.get("caveats") or [])
            + _html_copies(payload.get("copies"), _traced(payload))
            + _html_queries(payload.get("queries"))
            + _html_examples(examples, images)
            + _html_custody(payload.get("custody") or {})
            + f'<footer class="none">{_e(payload.get("format", FORMAT))}</footer></body></html>\n')


# ---------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`\[\]<>*])")


def _md(value: Any) -> str:
    """Plain text for Markdown: one line, and no link, image, code or HTML syntax from user strings.
    (`|` is escaped by the table formatter.)"""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def _md_attack(attack: str) -> str:
    return f"_{_md(attack)}_" if attack in NOT_FAMILIES else _md(attack)


def _md_row(example: Payload) -> dict[str, Any]:
    att, tr = example.get("attribution"), example.get("tracing")
    row: dict[str, Any] = {"row": int(example["row"]), "name": _md(example["name"])}
    if att is not None:
        family = att["attack"] not in NOT_FAMILIES
        strength = att.get("strength")
        top = _sorted_probs(att.get("attack_probabilities") or {})[:MD_TOP_ATTACKS]
        row |= {"attack": _md_attack(att["attack"]), "p(attack)": att.get("attack_probability"),
                "victim": _md(att.get("victim") or "unknown") if family else None,
                "p(victim)": att.get("victim_probability") if family else None,
                "strength": None if strength is None or not family
                else f"{strength:.3g} {_md(att.get('strength_unit', ''))}",
                "attack probabilities": ", ".join(f"{_md(n)} {p:.2f}" for n, p in top)}
    if tr is not None:
        row |= {"traced copy": "none of these copies" if tr.get("copy") is None else tr["copy"],
                "confidence": _num(tr.get("confidence"), TRACE_DIGITS), "accused": bool(tr.get("accused"))}
    row["caveats"] = "; ".join(_md(c) for c in example.get("caveats") or []) or "none"
    return row


def _md_summary(summary: Payload) -> str:
    def counts(mapping: Mapping[str, int] | None) -> str:
        return ", ".join(f"{_md(k)} {int(v)}" for k, v in (mapping or {}).items()) or "none"

    def get(key: str) -> str:  # None (a part not run) -> "-"
        return format_cell(summary.get(key))

    lines = [f"- examples: {get('n_examples')}, attacked: {get('attacked')}, "
             f"{Answer.NOT_ADVERSARIAL.value}: {get('not_adversarial')}, {Answer.UNKNOWN.value}: {get('unknown')}",
             f"- attacks: {counts(summary.get('attacks'))}", f"- victims: {counts(summary.get('victims'))}"]
    if summary.get("trace_confidence") is not None:
        copy = summary.get("traced_copy")
        accused = "accused" if summary.get("trace_accused") else "not accused"
        lines.append(f"- traced copy: {'none of these copies' if copy is None else copy} (confidence "
                     f"{summary['trace_confidence']:.{TRACE_DIGITS}f}, {accused})")
    if summary.get("one_source") is not None:
        lines.append(f"- one source: {'yes' if summary['one_source'] else 'no'}")
    return "\n".join(lines)


def _md_copies(copies: Sequence[Payload] | None, traced: bool) -> str:
    if copies is None:
        return NO_PER_COPY if traced else NO_RECORD
    columns = ["copy", "pooled confidence"] + (["null"] if any(c.get("null_confidence") is not None for c in copies)
                                               else []) + ["accused examples"]
    return markdown_table([{"copy": c["copy"], "pooled confidence": c["pooled_confidence"],
                            "null": c.get("null_confidence"), "accused examples": c.get("accused_examples")}
                           for c in copies], columns, digits=TRACE_DIGITS)


def _md_custody(custody: Payload) -> str:
    files = [{"file": _md(f["path"]), "role": _md(f["role"]), "sha256": _md(f["sha256"])}
             for f in custody.get("files") or []]
    return (f"- tool: {_md(custody.get('tool', '-'))}\n- command: {_md(custody.get('command', '-'))}\n"
            f"- time: {_md(custody.get('time', '-'))}\n\n" + markdown_table(files, ["file", "role", "sha256"]))


def render_markdown(payload: Payload) -> str:
    """The payload as Markdown: the HTML page's content in the same order, without images."""
    examples = payload["examples"]
    show_att = any(e.get("attribution") is not None for e in examples)
    show_tr = any(e.get("tracing") is not None for e in examples)
    # Fixed columns (a row whose part is None shows "-"), in the HTML table's order.
    columns = ["row", "name"] + (MD_ATTRIBUTION if show_att else []) + (MD_TRACING if show_tr else []) + ["caveats"]
    caveats = "\n".join(f"- {_md(c)}" for c in payload.get("caveats") or []) or "none"
    notes = ("" if show_att else NO_ATTRIBUTOR + "\n\n") + ("" if show_tr else NO_RECORD + "\n\n")
    rows = [_md_row(e) for e in examples]
    return (f"# {_md(payload.get('title') or 'Investigation report')}\n\n{_md(payload.get('verdict', ''))}\n\n"
            f"{_md_summary(payload.get('summary') or {})}\n\n## Caveats\n\n{caveats}\n\n"
            f"## Tracing: copies\n\n{_md_copies(payload.get('copies'), _traced(payload))}\n\n"
            f"{_md_queries(payload.get('queries'))}"
            f"## Examples ({len(examples)})\n\n{notes}{markdown_table(rows, columns)}\n\n"
            f"## Chain of custody\n\n{_md_custody(payload.get('custody') or {})}\n")
