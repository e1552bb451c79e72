"""`advforensics data`: list the data sets and inspect one (count, shape, class histogram, hash)."""

from __future__ import annotations

from pathlib import Path

import click

from advforensics.cli.common import ForensicsGroup
from advforensics.cli.options import emit_json, json_option


@click.group("data", cls=ForensicsGroup)
def data() -> None:
    """Data sets: embedded ones, MNIST/Fashion-MNIST (IDX), CIFAR-10, your own image folders.

    \b
    Examples:
      advforensics data list
      advforensics data info mnist-5k --split test
      advforensics data info mnist --data-dir ../shared/data --json mnist.json
    """


@data.command("list")
def list_command() -> None:
    """Table of the data sets: name, shape (C, H, W), classes, splits, where the data comes from.

    \b
    Example:
      advforensics data list
    """
    from advforensics.data import dataset_spec, list_datasets

    rows = [("NAME", "SHAPE", "CLASSES", "SPLITS", "SOURCE")]
    for name in list_datasets():
        spec = dataset_spec(name)
        shape = "x".join(map(str, spec.shape)) if spec.shape else "(from files)"
        classes = str(len(spec.classes)) if spec.classes else "(from files)"
        splits = "/".join(f"{s}:{spec.sizes[s]}" if s in spec.sizes else s for s in spec.splits) or "(from files)"
        rows.append((name, shape, classes, splits, spec.source_kind))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@data.command("info")
@click.argument("name")
@click.option("--split", default="train", show_default=True, help="Which split to load (train, test, ...).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the files are (default: $ADVFORENSICS_DATA_DIR or ~/.cache/advforensics/data); "
                   "for imagefolder the <split>/<class>/ root or a .zip.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Load only the first N examples.")
@click.option("--download", is_flag=True, help="Download missing files from the known mirrors (verified).")
@json_option
def info_command(name: str, split: str, data_dir: Path | None, limit: int | None, download: bool,
                 json_path: Path | None) -> None:
    """Load a data set and print its size, shape, class histogram, source and content sha256.

    \b
    Examples:
      advforensics data info digits
      advforensics data info mnist --split test --data-dir ../shared/data
      advforensics data info cifar10 --data-dir ../shared/data --limit 1000 --json cifar.json
      advforensics data info imagefolder --data-dir my_images/ --split val
    """
    import torch

    from advforensics.data import load_dataset

    dataset = load_dataset(name, split=split, data_dir=data_dir, download=download, limit=limit)
    info = dataset.info
    counts = torch.bincount(dataset.labels, minlength=len(info.classes)).tolist()
    images = dataset.images
    click.echo(f"name:     {info.name}")
    click.echo(f"split:    {info.split}")
    click.echo(f"examples: {info.num_examples}")
    click.echo(f"shape:    {' x '.join(map(str, info.shape))} (C x H x W)")
    click.echo(f"source:   {info.source}")
    click.echo(f"sha256:   {info.sha256}")
    if images.numel():
        click.echo(f"pixels:   min {images.min().item():.3f}  max {images.max().item():.3f}  "
                   f"mean {images.mean().item():.4f}")
    click.echo("classes:")
    width = max((len(c) for c in info.classes), default=0)
    for index, (label, count) in enumerate(zip(info.classes, counts)):
        click.echo(f"  {index:>3}  {label.ljust(width)}  {count}")
    payload = info.to_dict()
    payload["class_counts"] = dict(zip(info.classes, counts))
    payload["pixel_mean"] = float(images.mean()) if images.numel() else None
    emit_json(json_path, payload)


COMMANDS = [data]
