"""`advforensics investigate` and `advforensics.investigate`: both capabilities joined per example, the
report in three forms, the chain of custody."""

from __future__ import annotations

import math

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from advforensics.cli.main import cli


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_investigate_joins_attribution_and_tracing_with_custody(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "inv"
    args = ["investigate", str(workspace / "advs.npz"), "--record", str(workspace / "copies"), "--seller-key",
            str(workspace / "keys" / "seller.pub"), "--attributor", str(workspace / "mtaa.safetensors"),
            "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "examined" in result.output and "report:" in result.output
    payload = json.loads((out / "report.json").read_text())
    evidence = np.load(workspace / "advs.npz")
    kept = np.flatnonzero(evidence["success"])
    assert [e["row"] for e in payload["examples"]] == kept.tolist()  # rows of the original file
    for example in payload["examples"]:
        assert example["attribution"]["attack"] and 0 <= example["attribution"]["attack_probability"] <= 1
        assert len(example["tracing"]["copy_confidences"]) == 3
    assert [c["copy"] for c in payload["copies"]] == [0, 1, 2]
    assert all(c["null_confidence"] == round(1 - 0.01 / math.e, 6) for c in payload["copies"])  # 0.996321
    assert payload["summary"]["n_examples"] == len(kept) and payload["verdict"] == result.output.splitlines()[0]
    custody = {Path(f["path"]).name: f for f in payload["custody"]["files"]}
    for name in ("advs.npz", "record.json", "record.sig", "mtaa.safetensors", "seller.pub"):
        assert name in custody, name
    assert custody["advs.npz"]["sha256"] == _sha(workspace / "advs.npz")
    assert "investigate" in payload["custody"]["command"] and "--seller-key" in payload["custody"]["command"]
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"report.html", "report.json", "report.md"}
    assert all(sums[name] == _sha(out / name) for name in sums)
    html = (out / "report.html").read_text()
    assert html.count('class="example-row"') == len(kept) and "http://" not in html and "https://" not in html
    # the report is the tool's: rerunning replaces it; an edited one is kept unless --overwrite
    assert CliRunner().invoke(cli, args).exit_code == 0
    (out / "report.md").write_text("my notes")
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and (out / "report.md").read_text() == "my notes"


def test_one_capability_alone(workspace: Path, tmp_path: Path) -> None:
    import advforensics as af

    traced = af.investigate(workspace / "advs.npz", record=workspace / "copies")
    assert all(e["attribution"] is None and e["tracing"] is not None for e in traced.to_dict()["examples"])
    assert any("signature was not checked" in c for c in traced.to_dict()["caveats"])
    attributed = af.investigate(workspace / "advs.npz", attributor=workspace / "mtaa.safetensors")
    payload = attributed.to_dict()
    assert payload["copies"] is None and payload["summary"]["traced_copy"] is None
    assert all(e["tracing"] is None for e in payload["examples"])
    files = attributed.write(tmp_path / "att")
    assert [f.name for f in files] == ["report.html", "report.json", "report.md", "SHA256SUMS"]
    assert "## " in (tmp_path / "att" / "report.md").read_text()


def test_a_clean_image_folder_and_disagreement_caveats(workspace: Path, tmp_path: Path) -> None:
    """Clean digits as PNG files: read as a folder, every image gets a row and its own caveats."""
    import advforensics as af
    from advforensics.data import load_dataset
    from advforensics.evidence import save_images

    clean = load_dataset("digits", "test").images[:5]
    save_images(tmp_path / "clean", clean)
    result = af.investigate(tmp_path / "clean", record=workspace / "copies", attributor=workspace / "mtaa.safetensors")
    payload = result.to_dict()
    assert [Path(e["name"]).name for e in payload["examples"]] == [f"{i:05d}.png" for i in range(5)]
    assert len(result.images) == 5 and all(thumb.startswith(b"\x89PNG") for thumb, _ in result.images)
    assert sum(f["role"] == "evidence" for f in payload["custody"]["files"]) == 5


@pytest.mark.slow
def test_a_real_report_renders_in_headless_chromium(workspace: Path, tmp_path: Path) -> None:
    """The report of a real investigation (the workspace's evidence, record and attributor) in Debian's
    chromium with the network cut off: every image row shows, no console error, no request but the page."""
    from browser import open_in_chromium

    import advforensics as af

    result = af.investigate(workspace / "advs.npz", record=workspace / "copies",
                            attributor=workspace / "mtaa.safetensors", seller_key=workspace / "keys" / "seller.pub")
    page = result.write(tmp_path / "inv")[0]
    seen = open_in_chromium(page, tmp_path / "profile")
    rows = [e["row"] for e in result.to_dict()["examples"]]
    assert seen["dom"].count('class="example-row"') == len(rows)
    assert all(f'data-row="{row}"' in seen["dom"] for row in rows)
    assert seen["errors"] == [] and seen["requests"] == [page.as_uri()] and seen["failed"] == {}
    assert seen["images"] and all(seen["images"])
    assert seen["screenshot"].startswith(b"\x89PNG")


def test_null_level_holds_for_innocent_copies_under_dependence() -> None:
    """The per-copy null level (e x the geometric mean of p-values is a p-value, Vovk and Wang 2020):
    innocent copies' pooled confidence passes it at most 1% of the time, for independent examples and for
    examples that are copies of one another (the worst dependence), where 0.99 alone would not hold."""
    from advforensics.tracing.reports import LearnedReport

    level = LearnedReport.null_confidence(0.01)
    rng = np.random.default_rng(0)
    independent = 1 - np.exp(np.log(rng.uniform(size=(20000, 10))).mean(1))
    identical = 1 - rng.uniform(size=20000)  # ten copies of one example: the mean of equal logs
    assert (independent >= level).mean() <= 0.01 and (identical >= level).mean() <= 0.01
    assert (identical >= 0.99).mean() > (identical >= level).mean()
