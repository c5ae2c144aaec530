"""Metrics: accuracy, per-class precision/recall and the confusion matrix on a worked example."""

from __future__ import annotations

import numpy as np

from graft.models.evaluate import classification_report


def test_report_on_a_worked_example():
    targets = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 1, 1])
    report = classification_report(targets, predictions, ["a", "b", "c"])
    assert report["accuracy"] == 4 / 6 and report["num_images"] == 6
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]  # rows true, columns predicted
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": 2 / 3, "support": 3}
    assert report["per_class"]["b"] == {"precision": 0.5, "recall": 1.0, "support": 2}
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "support": 1}  # never predicted
