"""The one shape of a study: a dataclass config, named stages in a fixed order, a cache, results.json
and a report.

A study's config is checked when it is made (its `__post_init__`), before any work. A study runs
the stages the config names in the study's own order, keeps every expensive intermediate (attack sets, corpora, trained
models) under OUT so that rerunning the same command resumes, rewrites OUT/results.json after each
stage (an interrupted run keeps what it finished) and ends with the Markdown report (OUT/tables.md,
plus plots) drawn from results.json alone, so a report can be rebuilt without rerunning anything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from advforensics import distributed
from advforensics.errors import InputValidationError
from advforensics.utils import atomic_write_text, write_json

log = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """What a finished run wrote: its results (as in OUT/results.json), the report's text, every file."""

    results: dict[str, Any]
    report: str
    files: list[Path]

    @property
    def elapsed_s(self) -> float:
        return float(self.results.get("elapsed_s", 0.0))


class Study:
    """Base of the tracing and attribution studies. Subclasses name their stages in `stage_names` (in
    the order they run), implement `stage_<name>()` for each (returning JSON-able results), and
    `report(results) -> (markdown, extra files)`."""

    name: ClassVar[str]
    stage_names: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any, out_dir: str | Path, info: dict[str, Any] | None = None) -> None:
        unknown = set(config.stages) - set(self.stage_names)
        if unknown or not config.stages:
            raise InputValidationError(f"stages must be some of {', '.join(self.stage_names)}; got "
                                       f"{', '.join(config.stages) or 'none'}")
        self.config = config
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.info = dict(info or {})

    def run(self) -> StudyResult:
        start = time.time()
        results: dict[str, Any] = {"study": self.name, "config": asdict(self.config), "info": self.info}
        ranks = distributed.current()  # under torchrun every rank runs the stages; rank 0 writes
        for stage in self.stage_names:
            if stage in self.config.stages:
                log.info("%s study: stage %s", self.name, stage)
                results[stage] = getattr(self, f"stage_{stage.replace('-', '_')}")()
                if ranks.is_main:
                    write_json(self.out_dir / "results.json", results)
        results.update(self.summarise(results))
        results["elapsed_s"] = round(time.time() - start, 1)
        if not ranks.is_main:
            return StudyResult(results, "", [])
        write_json(self.out_dir / "results.json", results)
        text, files = self.report(results)
        atomic_write_text(self.out_dir / "tables.md", text)
        return StudyResult(results, text, [self.out_dir / "results.json", self.out_dir / "tables.md", *files])

    def summarise(self, results: dict[str, Any]) -> dict[str, Any]:
        """Figures computed across stages, added to results.json after the last one."""
        return {}

    def report(self, results: dict[str, Any]) -> tuple[str, list[Path]]:
        raise NotImplementedError
