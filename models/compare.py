"""`graft compare`: several run dirs side by side, as one Markdown table and one picture.

Reads only what `graft train` wrote (config.json, metrics.json), so runs of any age, strategy or
backbone compare, and nothing is re-evaluated. The output dir holds `report.md` (the table) and
`curves.png` (loss and accuracy per epoch, every run overlaid in its own colour: training solid,
evaluation dashed), written to a temp dir and renamed into place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from graft.artifact.errors import GraftError
from graft.artifact.outputs import atomic_directory, check_output_dir

REPORT_FILE = "report.md"
CURVES_FILE = "curves.png"
COLUMNS = ("run", "backbone", "strategy", "data (train / eval)", "epochs", "accuracy", "macro F1", "train time")


class CompareError(GraftError):
    """A run dir that cannot be compared (missing or unreadable files), or a refused output dir."""


@dataclass(frozen=True)
class RunSummary:
    """One run's row of the table and its per-epoch history."""

    name: str
    backbone: str
    strategy: str
    num_train: int
    num_eval: int
    epochs: str
    accuracy: float
    macro_f1: float
    seconds: float
    history: list[dict]

    def row(self) -> tuple[str, ...]:
        return (self.name, self.backbone, self.strategy, f"{self.num_train:,} / {self.num_eval:,}", self.epochs,
                f"{self.accuracy:.4f}", f"{self.macro_f1:.4f}", _duration(self.seconds))


def macro_f1(per_class: dict[str, dict]) -> float:
    """Unweighted mean over classes of 2PR / (P + R) (0 for a class with P + R = 0)."""
    scores = [2 * c["precision"] * c["recall"] / (c["precision"] + c["recall"]) if c["precision"] + c["recall"] else 0.0
              for c in per_class.values()]
    return sum(scores) / len(scores) if scores else 0.0


def summarise(run_dir: str | os.PathLike) -> RunSummary:
    """Read a run dir's config.json and metrics.json.

    Raises:
        CompareError: either file is missing or unreadable.
    """
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as error:
        raise CompareError(f"expected a graft run dir with config.json and metrics.json, got {run_dir}: {error}") from None
    history = metrics.get("history", [])
    phases: dict[str, int] = {}
    for entry in history:
        phases[entry.get("phase", "training")] = phases.get(entry.get("phase", "training"), 0) + 1
    epochs = " + ".join(f"{count} {phase}" if len(phases) > 1 else str(count) for phase, count in phases.items())
    timings = metrics.get("timings", {})
    return RunSummary(
        name=run_dir.resolve().name,
        backbone=config.get("backbone", metrics.get("backbone", "?")),
        strategy=config.get("strategy", metrics.get("strategy", "?")),
        num_train=int(config.get("data", {}).get("num_train", metrics.get("num_train_images", 0))),
        num_eval=int(metrics.get("num_images", 0)),
        epochs=epochs or "0",
        accuracy=float(metrics["accuracy"]),
        macro_f1=macro_f1(metrics.get("per_class", {})),
        seconds=float(timings.get("total_s", 0.0)),
        history=history,
    )


def markdown_table(runs: Sequence[RunSummary]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(run.row()) + " |" for run in runs]
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write `report.md` and `curves.png` for `run_dirs` into `out`; return the Markdown table.

    Raises:
        CompareError: no runs, an unreadable run dir, or an existing `out` without `overwrite`.
    """
    if not run_dirs:
        raise CompareError("expected at least one run dir, got none")
    out = Path(out)
    check_output_dir(out, overwrite, marker=REPORT_FILE, what="comparison dir", error=CompareError)
    runs = [summarise(run) for run in run_dirs]
    table = markdown_table(runs)
    with atomic_directory(out) as tmp:
        (tmp / REPORT_FILE).write_text(
            f"# Run comparison\n\n{table}\n"
            "Accuracy and macro F1 on each run's evaluation split; train time is the whole run "
            "(data, embedding, training, evaluation).\n\n"
            f"![loss and accuracy per epoch]({CURVES_FILE})\n"
        )
        plot_runs(runs, tmp / CURVES_FILE)
    return table


def plot_runs(runs: Sequence[RunSummary], path: Path) -> None:
    """Loss and accuracy per epoch, one colour per run, with each run's phase boundaries."""
    from graft.models.plots import draw_metric, mark_phases, plt  # matplotlib only when plotting

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for index, run in enumerate(runs):
            draw_metric(ax, run.history, metric, label=f"{run.name} ({run.strategy})", color=f"C{index}")
            mark_phases(ax, run.history)
        ax.set_ylabel(metric)
    fig.suptitle("training (solid) and evaluation (dashed) per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
