"""Every matplotlib figure the library draws: PNGs from the numbers it is handed, written atomically.

The capabilities pick the numbers out of their results and call these; this module imports neither
tracing nor attribution. matplotlib is imported on first use, with the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from advforensics.utils import atomic_target


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path, dpi: int) -> Path:  # type: ignore[no-untyped-def]
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return path


def plot_score_histograms(panels: Mapping[str, Mapping[str, Sequence[float]]], title: str, path: Path) -> Path:
    """Fig. 4a: one panel per score rule (panel title `{title}: {rule}`), the scores of the other
    (innocent) copies against the source copy's on shared bins, log counts. `panels` maps rule ->
    {"innocent": [...], "source": [...]}, in the order the panels appear."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for ax, (rule, scores) in zip(axes, panels.items()):
        innocent, source = list(scores["innocent"]), list(scores["source"])
        edges = np.linspace(min(innocent + source), max(innocent + source), 61)  # shared bins
        ax.hist(innocent, bins=edges, alpha=0.6, label="other copies")
        ax.hist(source, bins=edges, alpha=0.6, label="source copy")
        ax.set_yscale("log")  # the source's spike next to the innocents' spread
        ax.set_title(f"{title}: {rule}")
        ax.set_xlabel("score")
        ax.set_ylabel("examples")
    axes[0].legend()
    fig.tight_layout()
    return _save(plt, fig, path, dpi=110)


def plot_accuracy_vs_copies(counts: Sequence[int], accuracy: Mapping[str, Sequence[float]],
                            chance: Sequence[float], path: Path) -> Path:
    """Fig. 4b: tracing accuracy (%) per score rule against the number of copies, with chance dashed.
    `accuracy` maps rule -> one accuracy per entry of `counts`; accuracies and chance are fractions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for rule, values in accuracy.items():
        ax.plot(counts, [100 * v for v in values], marker="o", label=rule)
    ax.plot(counts, [100 * c for c in chance], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("number of copies")
    ax.set_ylabel("tracing accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    return _save(plt, fig, path, dpi=110)


def plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], title: str, path: Path) -> Path:
    """A confusion matrix (rows true, columns predicted): cells shaded by the row-normalised rate and
    labelled with the count."""
    plt = _pyplot()
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(names), 1.0 + 0.6 * len(names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _save(plt, fig, path, dpi=120)


__all__ = ["plot_score_histograms", "plot_accuracy_vs_copies", "plot_confusion"]
