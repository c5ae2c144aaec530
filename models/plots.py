"""PNG plots of a run: loss and accuracy per epoch, and the confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history: Sequence[dict], path: Path, title: str) -> None:
    """Loss (left) and accuracy (right) per epoch, training and, where measured, evaluation."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            points = [(h["epoch"], h[f"{split}_{metric}"]) for h in history if h.get(f"{split}_{metric}") is not None]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, style, marker="o" if len(points) < 30 else None,
                        label="training" if split == "train" else "evaluation")
        # Fine-tune: mark where the backbone was unfrozen.
        phases = [h["epoch"] for h in history if h.get("phase") == "fine-tune"]
        if phases and phases[0] > 1:
            ax.axvline(phases[0] - 0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
