"""Classification metrics on the evaluation split: accuracy, per-class precision/recall, confusion matrix."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [C, C]: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets, predictions), 1)
    return matrix


def classification_report(targets: np.ndarray, predictions: np.ndarray, labels: Sequence[str]) -> dict:
    """Metrics as stored in metrics.json.

    Returns:
        `accuracy` (fraction in 0..1), `num_images`, `per_class` (label -> precision, recall,
        support; precision is 0 for a class never predicted), `confusion_matrix` (rows true,
        columns predicted, in `labels` order) and `labels`.
    """
    matrix = confusion_matrix(np.asarray(targets), np.asarray(predictions), len(labels))
    correct = np.diag(matrix)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    per_class = {
        label: {
            "precision": float(correct[i] / predicted[i]) if predicted[i] else 0.0,
            "recall": float(correct[i] / support[i]) if support[i] else 0.0,
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "accuracy": float(correct.sum() / max(matrix.sum(), 1)),
        "num_images": int(matrix.sum()),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "labels": list(labels),
    }
