"""Prometheus metrics beyond BentoML's defaults: per-stage time and executed batch size, by model.

Created on first use, not at import: BentoML sets `PROMETHEUS_MULTIPROC_DIR` in each worker after
the service module is imported, and prometheus_client picks its multi-process storage when a metric
is created. With it, `/metrics` on the API service also shows what the inference worker recorded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

@dataclass(frozen=True)
class Metrics:
    stage_seconds: object  # prometheus_client.Histogram, labels: stage, model
    batch_size: object  # prometheus_client.Histogram, labels: model

    def observe_stage(self, stage: str, model: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage, model=model).observe(seconds)

    def observe_batch(self, model: str, size: int) -> None:
        self.batch_size.labels(model=model).observe(size)


@functools.cache
def metrics() -> Metrics:
    """The process's metrics (created once)."""
    from prometheus_client import Histogram

    return Metrics(
        stage_seconds=Histogram(
            "graft_stage_duration_seconds",
            "Time per image (decode, preprocess: resize and crop) or per executed batch (normalize, inference)",
            labelnames=("stage", "model"),
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        ),
        batch_size=Histogram(
            "graft_batch_size",
            "Images per executed ONNX Runtime batch (before bucket padding)",
            labelnames=("model",),
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        ),
    )
