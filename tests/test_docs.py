"""The docs a user navigates: every relative link in the README and docs/ resolves, and no page names an
absolute path of the machine it was written on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = [target for target in LINK.findall(page.read_text())
              if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists()]
    assert not broken, f"{page.name}: broken links {broken}"


def test_no_page_or_benchmark_hard_codes_an_absolute_project_path() -> None:
    sources = [*PAGES, *sorted((REPO / "benchmarks").glob("*.py"))]
    offenders = [str(p.relative_to(REPO)) for p in sources if re.search(r"/(work|root|home)/\w", p.read_text())]
    assert not offenders, offenders
