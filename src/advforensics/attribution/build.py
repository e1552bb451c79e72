"""`build_corpus`: the whole `attribution corpus` job from names and paths (data set, victims' weights,
grid), for the command line and the attribution study alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from advforensics.attribution.corpus_generation import CorpusConfig, CorpusReport, generate_corpus
from advforensics.attribution.grid import load_grid
from advforensics.attribution.victims import cw_victim_params, load_victims
from advforensics.errors import InputValidationError
from advforensics.utils import resolve_device

#: grids whose C&W kappa follows each victim's reachable margins by default (the paper's); the others
#: state kappa in logits
AUTO_KAPPA_GRIDS = ("default", "small")


@dataclass
class CorpusJob:
    """What `build_corpus` made: the generator's report and the C&W parameters each victim got."""

    report: CorpusReport
    victim_params: dict[str, dict[str, dict[str, Any]]]


def build_corpus(data: str, victims: str, grid: str, out: str | Path, *, data_dir: str | Path | None = None,
                 split: str = "test", limit: int | None = None, start: int = 0, clean_class: bool = False,
                 cw_kappa_scale: str | None = None, cw_headroom: float = 1.5, quantize: bool = True,
                 shard_images: int = 256, batch_size: int = 128, seed: int = 0, resume: bool = False,
                 progress: bool = True, device: str = "auto") -> CorpusJob:
    """Attack images start..start+limit of a data set's split with every cell of `grid` (a name or a
    grid JSON file) on every victim (a folder of zoo weights or a comma list) and store the corpus in
    `out` (see corpus_generation.generate_corpus for resuming and locking).

    cw_kappa_scale: "auto" (per victim, from its reachable margins: headroom x the largest kappa maps to
    the victim's 10th-percentile margin) or a number; default auto for AUTO_KAPPA_GRIDS, else 1.
    """
    from advforensics.data import load_dataset

    if start < 0:
        raise InputValidationError(f"start must be >= 0, got {start}")
    target = resolve_device(device)
    grid_spec = load_grid(grid, clean_class)
    if cw_kappa_scale is None:
        cw_kappa_scale = "auto" if grid in AUTO_KAPPA_GRIDS else "1"
    dataset = load_dataset(data, split=split, data_dir=data_dir, limit=None if limit is None else start + limit)
    indices = np.arange(start, len(dataset.images), dtype=np.int64)
    if len(indices) == 0:
        raise InputValidationError(f"start {start} leaves no images of the {split} split")
    images, labels = dataset.images[start:], dataset.labels[start:]
    victim_models, victim_info = load_victims(victims)
    for model in victim_models.values():
        model.to(target)
    out = Path(out)
    victim_params = cw_victim_params(grid_spec, victim_models, images, labels, cw_kappa_scale, cw_headroom,
                                     stored=out / "manifest.json" if resume else None, device=target)
    info = getattr(dataset, "info", None)
    data_info = {"name": data, "split": split, "limit": limit, "start": start,
                 **({k: v for k, v in vars(info).items() if isinstance(v, (str, int, float))} if info else {})}
    config = CorpusConfig(shard_images=shard_images, batch_size=batch_size, quantize=quantize, seed=seed,
                          victim_params=victim_params)
    report = generate_corpus(images, labels, victim_models, grid_spec, out, config=config, indices=indices,
                             data_info=data_info, victim_info=victim_info, resume=resume, progress=progress,
                             device=target)
    return CorpusJob(report, victim_params)


__all__ = ["AUTO_KAPPA_GRIDS", "CorpusJob", "build_corpus"]
