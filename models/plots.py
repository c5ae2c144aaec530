"""PNG plots of a run: loss and accuracy per epoch, and the confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(history: Sequence[dict], path: Path, title: str) -> None:
    """Loss (left) and accuracy (right) per epoch, training and, where measured, evaluation.

    Each phase of a run (a fine-tune's head warm-up, then the network) is drawn and labelled on
    its own, with a line at the boundary; short series get markers, so a one-epoch run's single
    point is visible.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        draw_metric(ax, history, metric)
        mark_phases(ax, history)
        ax.set_ylabel(metric)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def phases(history: Sequence[dict]) -> list[tuple[str, list[dict]]]:
    """The history split into consecutive phases, in order: [(phase name, entries), ...]."""
    groups: list[tuple[str, list[dict]]] = []
    for entry in history:
        phase = entry.get("phase", "training")
        if not groups or groups[-1][0] != phase:
            groups.append((phase, []))
        groups[-1][1].append(entry)
    return groups


def draw_metric(ax, history: Sequence[dict], metric: str, *, label: str = "", color=None) -> None:
    """Training (solid) and evaluation (dashed) `metric` per epoch on `ax`, one series per phase."""
    groups = phases(history)
    for index, (phase, entries) in enumerate(groups):
        for split, style in (("train", "-"), ("val", "--")):
            points = [(h["epoch"], h[f"{split}_{metric}"]) for h in entries if h.get(f"{split}_{metric}") is not None]
            if not points:
                continue
            epochs, values = zip(*points)
            name = "training" if split == "train" else "evaluation"
            parts = [p for p in (label, name, phase if len(groups) > 1 else "") if p]
            marker = ("o" if split == "train" else "s") if len(points) < 30 else None  # single points stay apart
            ax.plot(epochs, values, style, marker=marker, markersize=4,
                    color=color if color is not None else f"C{2 * index + (split == 'val')}",
                    label=" ".join(parts))
    ax.set_xlabel("epoch")
    # min_n_ticks=1: a one-entry history (a feature-extract run's fit) gets the tick 1, not 0.945 ... 1.050.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def mark_phases(ax, history: Sequence[dict]) -> None:
    """A dotted line and the phase names at each phase boundary (e.g. warm-up | fine-tune)."""
    groups = phases(history)
    for (before, _), (after, entries) in zip(groups, groups[1:]):
        boundary = entries[0]["epoch"] - 0.5
        ax.axvline(boundary, color="grey", linewidth=0.8, linestyle=":")
        ax.annotate(f"{before} | {after}", xy=(boundary, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, -12), textcoords="offset points", ha="center", fontsize=8, color="grey")


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix with counts in the cells."""
    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 30:  # beyond that the numbers are unreadable
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                    color="white" if rates[row, col] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
