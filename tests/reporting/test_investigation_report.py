"""The investigation report's renderers (reporting/investigation.py): HTML and Markdown from one payload.

Fast tests read the HTML as text and through html.parser. The slow tests open the page in a real
headless Chromium (Debian's `chromium` package) driven over the DevTools protocol, with the network
made unreachable, and check that it renders every row, logs no error, makes no request and can be
captured as a screenshot (ADVFORENSICS_WRITE_SCREENSHOT=1 also writes it to docs/img/).
"""

from __future__ import annotations

import base64
import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from advforensics.reporting.investigation import render_html, render_markdown
from browser import open_in_chromium

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DOC = REPO_ROOT / "docs" / "img" / "investigation-report.png"
EVIL_NAME = "<img src=x onerror=alert(1)>.png"
FAMILIES = ["pgd", "fgsm", "cw", "hopskipjump", "boundary"]
VICTIMS = ["lenet", "resnet18", "vgg16"]
UNITS = {"pgd": "eps (Linf)", "fgsm": "eps (Linf)", "cw": "L2", "hopskipjump": "L2", "boundary": "L2"}
TRACED = 3  # the copy the realistic evidence traces to


# ---------------------------------------------------------------- a realistic payload and its images

def _probabilities(rng: np.random.Generator, top: str, p_top: float) -> dict[str, float]:
    names = FAMILIES + ["not adversarial", "unknown attack"]
    rest = rng.dirichlet(np.ones(len(names) - 1)) * (1 - p_top)
    others = [n for n in names if n != top]
    return {top: round(p_top, 3)} | {n: round(float(p), 3) for n, p in zip(others, rest)}


def _attribution(rng: np.random.Generator, i: int) -> dict[str, Any]:
    attack = "not adversarial" if i % 7 == 6 else "unknown attack" if i % 11 == 10 else FAMILIES[i % len(FAMILIES)]
    p_top = float(rng.uniform(0.55, 0.98))
    family = attack in FAMILIES
    return {"attack": attack, "attack_probability": round(p_top, 3),
            "attack_probabilities": _probabilities(rng, attack, p_top),
            "victim": VICTIMS[i % len(VICTIMS)] if family else None,
            "victim_probability": round(float(rng.uniform(0.4, 0.95)), 3),
            "strength": round(float(rng.uniform(0.02, 0.3)), 3) if family else None,
            "strength_unit": UNITS.get(attack, "")}


def _tracing(rng: np.random.Generator, i: int, n_copies: int) -> dict[str, Any]:
    confidences = rng.uniform(0.0, 0.15, n_copies)
    traced = i % 5 != 4  # every fifth example does not trace to any copy
    if traced:
        confidences[TRACED] = rng.uniform(0.8, 0.99)
    return {"copy": TRACED if traced else None, "confidence": round(float(confidences.max()), 3),
            "accused": traced, "copy_confidences": [round(float(c), 3) for c in confidences]}


def _counts(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def make_payload(n: int = 12, attribution: bool = True, tracing: bool = True, n_copies: int = 20,
                 names: list[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """What `Investigation.to_dict()` produces for n examples, with or without each capability."""
    rng = np.random.default_rng(seed)
    names = names or [f"seized/batch-03/img_{i:03d}.png" for i in range(n)]
    examples = []
    for i in range(n):
        caveats = ["JPEG-recompressed (quality about 75): tracing confidence is lower"] if i % 4 == 3 else []
        examples.append({"row": i, "name": names[i], "caveats": caveats,
                         "attribution": _attribution(rng, i) if attribution else None,
                         "tracing": _tracing(rng, i, n_copies) if tracing else None})
    atts = [e["attribution"] for e in examples if e["attribution"]]
    attacked = [a for a in atts if a["attack"] in FAMILIES]
    accused = sum(1 for e in examples if e["tracing"] and e["tracing"]["accused"])
    copies = [{"copy": c, "pooled_confidence": 0.999 if c == TRACED else round(float(rng.uniform(0.01, 0.1)), 3),
               "accused_examples": accused if c == TRACED else 0}
              for c in range(n_copies)] if tracing else None
    # Worded as investigation.py's _verdict words it.
    verdict = f"{n} images examined."
    if attribution:
        attacks = ", ".join(f"{k} ({v})" for k, v in _counts(a["attack"] for a in attacked).items())
        victims = ", ".join(f"{k} ({v})" for k, v in _counts(a["victim"] for a in attacked).items())
        verdict += f" {len(attacked)} look adversarial: attacks {attacks}; victims {victims}."
    if tracing:
        verdict += f" They were crafted on copy {TRACED}, accused at confidence 0.9990 (threshold 0.99)."
    return {
        "format": "advforensics-investigation/1", "title": "Investigation: seized batch 03", "verdict": verdict,
        "summary": {"n_examples": n, "attacked": len(attacked) if attribution else None,
                    "not_adversarial": sum(a["attack"] == "not adversarial" for a in atts) if attribution else None,
                    "unknown": sum(a["attack"] == "unknown attack" for a in atts) if attribution else None,
                    "attacks": _counts(a["attack"] for a in attacked),
                    "victims": _counts(a["victim"] for a in attacked),
                    "traced_copy": TRACED if tracing else None, "trace_confidence": 0.999 if tracing else None,
                    "trace_accused": True if tracing else None, "one_source": True if tracing else None},
        "examples": examples, "copies": copies,
        "caveats": ["The attributor's corpus holds CIFAR-10 victims only; these are 8x8 digits."]
        if attribution else [],
        "custody": {"tool": "advforensics 0.1.0",
                    "command": "advforensics investigate seized/batch-03 --record seller/ "
                               "--attributor mtaa.safetensors --out report/",
                    "time": "2025-12-02T10:15:00+00:00",
                    "files": [{"path": "seized/batch-03", "role": "evidence", "sha256": "a" * 64},
                              {"path": "seller/record.json", "role": "seller record", "sha256": "b" * 64},
                              {"path": "mtaa.safetensors", "role": "attributor", "sha256": "c" * 64}]},
    }


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _heat(delta: np.ndarray) -> np.ndarray:
    """A signed perturbation as a blue-white-red (H, W, 3) uint8 map."""
    scaled = delta / (np.abs(delta).max() + 1e-12)  # (H, W) in [-1, 1]
    red = np.where(scaled > 0, 1.0, 1.0 + scaled)
    blue = np.where(scaled < 0, 1.0, 1.0 - scaled)
    green = 1.0 - np.abs(scaled)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def make_images(payload: dict[str, Any], digits: bool = False) -> list[tuple[bytes, bytes | None]]:
    """A thumbnail per example (scikit-learn digits when `digits`, else noise) and a heat map for attacked ones."""
    n = len(payload["examples"])
    rng = np.random.default_rng(1)
    if digits:
        from sklearn.datasets import load_digits

        thumbs = (load_digits().images[:n] / 16.0 * 255).astype(np.uint8)  # (n, 8, 8)
    else:
        thumbs = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    pairs = []
    for example, thumb in zip(payload["examples"], thumbs):
        att = example["attribution"]
        attacked = att is None or att["attack"] != "not adversarial"
        pairs.append((_png(thumb), _png(_heat(rng.normal(size=(8, 8)))) if attacked else None))
    return pairs


# ---------------------------------------------------------------- reading the HTML back

class _Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser


def _example_rows(page: str) -> list[str | None]:
    return [a.get("data-row") for t, a in _parse(page).tags
            if t == "tr" and "example-row" in (a.get("class") or "").split()]


def _section(page: str, heading: str) -> str:
    """The HTML between `<h2>heading...` and the next `<h2>`."""
    match = re.search(rf"<h2>{re.escape(heading)}.*?(?=<h2>|</body>)", page, re.S)
    assert match is not None, f"no section {heading!r}"
    return match.group(0)


# ---------------------------------------------------------------- fast tests

def test_html_is_one_self_contained_document() -> None:
    payload = make_payload()
    page = render_html(payload, make_images(payload))
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<!DOCTYPE html>") == 1 and page.count("<html") == 1 and page.count("</html>") == 1
    # base64 may hold "//", so look for URLs in the page with its data: URLs cut out.
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", page)
    for needle in ("http://", "https://", "//", "<script", "<link", "url(", "@import", "href="):
        assert needle not in without_data.lower(), needle
    sources = [a.get("src") for _, a in _parse(page).tags if "src" in a]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    # The CSP forbids everything but inline style and data: images.
    assert "default-src 'none'; img-src data:; style-src 'unsafe-inline'" in page


def test_html_has_one_example_row_per_example_and_inlines_every_image() -> None:
    payload = make_payload(n=9)
    images = make_images(payload)
    page = render_html(payload, images)
    assert _example_rows(page) == [str(e["row"]) for e in payload["examples"]]
    n_images = sum(1 + (heat is not None) for _, heat in images)
    assert sum(1 for t, _ in _parse(page).tags if t == "img") == n_images
    assert base64.b64encode(images[4][0]).decode() in page


def test_html_sections_come_in_order() -> None:
    payload = make_payload()
    page = render_html(payload, make_images(payload))
    marks = [payload["verdict"].split(".")[0], "<h2>Caveats", "<h2>Tracing: copies", "<h2>Examples",
             "<h2>Chain of custody"]
    positions = [page.find(m) for m in marks]
    assert -1 not in positions and positions == sorted(positions)
    assert len(re.findall(r'<tr class="copy-row[ "]', page)) == len(payload["copies"])
    assert re.findall(r'<tr class="copy-row hit" data-copy="(\d+)"', page) == [str(TRACED)]
    assert "traced copy: <b>3</b> (confidence 0.9990, accused)" in page  # not rounded up to 1.00
    assert f"| 3 | 0.9990 | {payload['copies'][TRACED]['accused_examples']} |" in render_markdown(payload)
    custody = _section(page, "Chain of custody")
    assert all(f["sha256"] in custody for f in payload["custody"]["files"])


def test_user_strings_are_escaped() -> None:
    payload = make_payload(n=3, names=[EVIL_NAME, 'a"b\'c&d.png', "plain.png"])
    payload["title"] = "<b>bold</b> title"
    payload["caveats"].append("<script>alert(2)</script>")
    payload["examples"][1]["caveats"].append("<iframe src=x>")
    payload["examples"][0]["attribution"]["attack_probabilities"]["<svg onload=alert(3)>"] = 0.01
    payload["examples"][0]["attribution"]["victim"] = "<u>victim</u>"
    payload["custody"]["command"] = "investigate '<img src=y>'"
    payload["custody"]["files"][0]["path"] = "ev/<s>x</s>.png"
    images = make_images(payload)
    page = render_html(payload, images)
    for raw in (EVIL_NAME, "<b>bold</b>", "<script>", "<iframe", "<svg onload", "<u>", "<img src=y>", "<s>x"):
        assert raw not in page, raw
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert "a&quot;b&#x27;c&amp;d.png" in page
    # Parsed back, no tag came from the payload: the only images are ours and the text holds the names.
    tags = _parse(page)
    assert sum(1 for t, _ in tags.tags if t == "img") == sum(1 + (h is not None) for _, h in images)
    assert not {"script", "iframe", "u", "s"} & {t for t, _ in tags.tags}
    assert not [k for _, a in tags.tags for k in a if k.startswith("on")]
    assert "<b>bold</b>" in "".join(tags.text)
    assert EVIL_NAME in "".join(tags.text)


def test_not_adversarial_and_unknown_are_verdicts_not_families() -> None:
    payload = make_payload(n=12)
    page = render_html(payload, make_images(payload))
    assert '<em class="nf">not adversarial</em>' in page and '<em class="nf">unknown attack</em>' in page
    assert "<b>not adversarial</b>" not in page and "<b>pgd</b>" in page
    markdown = render_markdown(payload)
    assert "| _not adversarial_ |" in markdown and "| _unknown attack_ |" in markdown


def test_empty_caveats_show_none() -> None:
    payload = make_payload(n=2, attribution=False)
    assert payload["caveats"] == []
    page = render_html(payload, make_images(payload))
    assert '<p class="none">none</p>' in _section(page, "Caveats")
    assert "## Caveats\n\nnone\n" in render_markdown(payload)


def test_markdown_has_verdict_rows_and_custody() -> None:
    payload = make_payload(n=7, names=[f"img|{i}.png" for i in range(7)])
    markdown = render_markdown(payload)
    assert payload["verdict"] in markdown
    table = markdown.split("## Examples")[1].split("## Chain of custody")[0]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(line.split("|")[1]) for line in rows] == list(range(7))
    # The `|` in every name is escaped, so each row has as many cell borders as the header.
    header = next(line for line in table.splitlines() if line.startswith("| row |"))
    borders = len(re.findall(r"(?<!\\)\|", header))
    assert all(len(re.findall(r"(?<!\\)\|", line)) == borders for line in rows)
    custody = markdown.split("## Chain of custody")[1]
    assert all(f["sha256"] in custody for f in payload["custody"]["files"])
    assert "- command: advforensics investigate seized/batch-03" in custody


def test_markdown_columns_line_up_when_one_row_lacks_a_part() -> None:
    payload = make_payload(n=3)
    payload["examples"][0]["attribution"] = None
    payload["examples"][2]["tracing"] = None
    table = render_markdown(payload).split("## Examples")[1].split("## Chain of custody")[0]
    header, *_ = [line for line in table.splitlines() if line.startswith("| row |")]
    assert header.startswith("| row | name | attack |") and header.endswith("| accused | caveats |")
    row0 = next(line for line in table.splitlines() if line.startswith("| 0 |"))
    assert row0.split(" | ")[2:8] == ["-"] * 6  # attribution cells empty, then tracing
    assert row0.split(" | ")[8] == "3"


def test_markdown_neutralises_link_and_html_syntax_in_names() -> None:
    payload = make_payload(n=2, names=["![x](http://evil.example/t.png)\nsecond line", EVIL_NAME])
    markdown = render_markdown(payload)
    assert "![x](" not in markdown and "\nsecond line" not in markdown
    assert re.search(r"(?<!\\)<", markdown) is None  # every < is escaped, so no HTML tag
    assert "!\\[x\\](http://evil.example/t.png) second line" in markdown
    assert "\\<img src=x onerror=alert(1)\\>.png" in markdown


def test_tracing_only_payload_renders_and_says_attribution_was_not_run() -> None:
    payload = make_payload(n=4, attribution=False)
    page = render_html(payload, make_images(payload))
    assert _example_rows(page) == ["0", "1", "2", "3"]
    assert "Attribution not run: no attributor was given" in page and "<th>attribution</th>" not in page
    assert "<th>traced copy</th>" in page and "copy 3" in page
    markdown = render_markdown(payload)
    assert "Attribution not run" in markdown and "| attack |" not in markdown and "traced copy" in markdown
    assert "None" not in markdown and "- examples: 4, attacked: -, not adversarial: -, unknown attack: -" in markdown


def test_copy_null_level_is_marked_when_given() -> None:
    payload = make_payload(n=2, n_copies=4)
    assert "<th>null</th>" not in render_html(payload, make_images(payload))
    for copy in payload["copies"]:
        copy["null_confidence"] = 0.25
    page = render_html(payload, make_images(payload))
    assert "<th>null</th>" in page and page.count('<i style="left:25.0%"></i>') == 4
    assert "| copy | pooled confidence | null | accused examples |" in render_markdown(payload)


def test_tracing_without_per_copy_confidences_says_so() -> None:
    payload = make_payload(n=3)
    payload["copies"] = None  # a tracing rule other than the learned one
    page = render_html(payload, make_images(payload))
    copies = _section(page, "Tracing: copies")
    assert "gives no per-copy pooled confidence" in copies and "Tracing not run" not in copies
    assert "gives no per-copy pooled confidence" in render_markdown(payload)


def test_attribution_only_payload_renders_and_says_tracing_was_not_run() -> None:
    payload = make_payload(n=4, tracing=False)
    page = render_html(payload, make_images(payload))
    assert _example_rows(page) == ["0", "1", "2", "3"]
    assert "Tracing not run: no seller record was given" in _section(page, "Tracing: copies")
    assert "<th>traced copy</th>" not in page and "<th>attribution</th>" in page and "traced copy:" not in page
    markdown = render_markdown(payload)
    assert "Tracing not run" in markdown.split("## Tracing: copies")[1].split("## Examples")[0]
    assert "| traced copy |" not in markdown and "| attack |" in markdown


def test_untraced_example_says_none_of_these_copies() -> None:
    payload = make_payload(n=5)
    assert payload["examples"][4]["tracing"]["copy"] is None
    page = render_html(payload, make_images(payload))
    row = re.search(r'<tr class="example-row" data-row="4">.*?</tr>', page, re.S).group(0)
    assert "none of these copies" in row and "not accused" in row
    assert "| none of these copies |" in render_markdown(payload)


def test_bad_images_are_refused() -> None:
    payload = make_payload(n=3)
    images = make_images(payload)
    with pytest.raises(ValueError, match="images: 2 image pairs for 3 examples"):
        render_html(payload, images[:2])
    with pytest.raises(ValueError, match="PNG"):
        render_html(payload, [(b"GIF89a...", None)] + images[1:])


# ---------------------------------------------------------------- headless Chromium over the DevTools protocol

@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    payload = make_payload(n=12, names=[f"seized/batch-03/img_{i:03d}.png" for i in range(11)] + [EVIL_NAME])
    images = make_images(payload, digits=True)
    page = tmp_path / "investigation.html"
    page.write_text(render_html(payload, images), encoding="utf-8")
    result = open_in_chromium(page, tmp_path / "profile")

    assert _example_rows(result["dom"]) == [str(i) for i in range(12)]
    assert "onerror" not in [k for _, a in _parse(result["dom"]).tags for k in a]  # the evil name stayed text
    assert result["errors"] == []
    assert result["requests"] == [page.as_uri()] and result["failed"] == {}  # the page itself and nothing else
    assert len(result["images"]) == sum(1 + (h is not None) for _, h in images) and all(result["images"])
    shot = result["screenshot"]
    assert shot.startswith(b"\x89PNG\r\n\x1a\n")
    picture = Image.open(io.BytesIO(shot)).convert("L")
    assert picture.size == (1280, 2000)
    low, high = picture.getextrema()
    assert high - low > 100  # text and bars, not a blank page
    (tmp_path / "investigation.png").write_bytes(shot)
    if os.environ.get("ADVFORENSICS_WRITE_SCREENSHOT") == "1":
        SCREENSHOT_DOC.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT_DOC.write_bytes(shot)


@pytest.mark.slow
def test_browser_check_catches_errors_and_requests(tmp_path: Path) -> None:
    """The checks above can fail: a page that throws, logs an error and fetches an image is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                    '<script>console.error("boom-console"); throw new Error("boom-throw");</script>'
                    "</body></html>", encoding="utf-8")
    result = open_in_chromium(page, tmp_path / "profile")
    assert any("boom-console" in e for e in result["errors"])
    assert any("boom-throw" in e for e in result["errors"])
    assert "http://example.invalid/x.png" in result["requests"]
    assert result["failed"] == {"http://example.invalid/x.png": "net::ERR_PROXY_CONNECTION_FAILED"}
    assert result["images"] == [False]


@pytest.mark.slow
def test_csp_blocks_markup_that_slipped_past_escaping(tmp_path: Path) -> None:
    """Defence in depth: a script and a remote image spliced into the page neither run nor load."""
    payload = make_payload(n=2)
    injected = ('<img src="http://example.invalid/y.png"><script>console.log("ran")</script>'
                '<script>document.title = "ran"</script></body>')
    page = tmp_path / "spliced.html"
    page.write_text(render_html(payload, make_images(payload)).replace("</body>", injected), encoding="utf-8")
    result = open_in_chromium(page, tmp_path / "profile")
    # Chromium reports the image request, then fails it for the policy: it never reaches the network.
    assert result["requests"] == [page.as_uri(), "http://example.invalid/y.png"]
    assert result["failed"] == {"http://example.invalid/y.png": "csp"}
    assert "<title>ran</title>" not in result["dom"]
    assert any("Content Security Policy" in e for e in result["errors"])
