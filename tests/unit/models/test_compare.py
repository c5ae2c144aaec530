"""`graft compare`: a table and one picture from run dirs as `graft train` wrote them."""

from __future__ import annotations

import json
import shutil

import pytest

from graft.cli import main
from graft.models.compare import macro_f1


def test_macro_f1():
    assert macro_f1({"a": {"precision": 1.0, "recall": 0.5}, "b": {"precision": 0.0, "recall": 0.0}}) == pytest.approx(1 / 3)


@pytest.mark.slow
def test_compare_runs(trained_run, tmp_path, capsys):
    # A second run: the shared one with a fine-tune-shaped history (warm-up, then network epochs).
    other = tmp_path / "fmnist-ft"
    shutil.copytree(trained_run, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["history"] = [dict(h, phase="warm-up") for h in metrics["history"]] + [
        {"epoch": 2, "phase": "fine-tune", "phase_epoch": 1, "phase_epochs": 1, "train_loss": 0.5,
         "train_accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.79}]
    metrics["accuracy"] = 0.79
    (other / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "report"
    assert main(["compare", str(trained_run), str(other), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    lines = (out / "report.md").read_text().splitlines()
    assert "| run | backbone | strategy | data (train / eval) | epochs | accuracy | macro F1 | train time |" in lines
    # A feature-extract run's history is its one head fit; the fine-tune-shaped copy adds an epoch.
    assert any(line.startswith("| fmnist-fe | tf_efficientnet_lite0 | feature-extract | 300 / 100 | 1 |") for line in lines)
    assert any(line.startswith("| fmnist-ft |") and "| 1 warm-up + 1 fine-tune | 0.7900 |" in line for line in lines)
    assert "| fmnist-fe |" in table
    assert (out / "curves.png").stat().st_size > 10_000
    assert main(["compare", str(trained_run), "--out", str(out)]) == 2  # exists: refused without --overwrite
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2
    assert "expected a graft run dir" in capsys.readouterr().err
