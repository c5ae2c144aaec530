"""Prometheus metrics beyond BentoML's defaults: per-stage times, batch sizes, queue depth,
refusals and cache lookups, by model.

Created on first use, not at import: BentoML sets `PROMETHEUS_MULTIPROC_DIR` in each worker after
the service module is imported, and prometheus_client picks its multi-process storage when a metric
is created. With it, `/metrics` shows what every worker recorded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from graft.service.batcher import BatchObserver

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Metrics:
    stage_seconds: Histogram  # labels: stage, model
    batch_size: Histogram  # labels: model
    queue_depth: Gauge  # labels: model
    shed: Counter  # labels: reason, model
    cache_lookups: Counter  # labels: result (hit, miss), model

    def observe_stage(self, stage: str, model: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage, model=model).observe(seconds)

    def observer(self, model: str) -> BatchObserver:
        """What one model's batcher reports to."""
        return _ModelObserver(self, model)


class _ModelObserver(BatchObserver):
    def __init__(self, metrics: Metrics, model: str) -> None:
        self.depth = metrics.queue_depth.labels(model=model)
        self.sizes = metrics.batch_size.labels(model=model)
        self.queued = metrics.stage_seconds.labels(stage="queue", model=model)
        self.inference = metrics.stage_seconds.labels(stage="inference", model=model)
        self.shed_counter = metrics.shed
        self.model = model

    def queue_depth(self, depth: int) -> None:
        self.depth.set(depth)

    def batch(self, size: int, queued_seconds: Sequence[float], run_seconds: float) -> None:
        self.sizes.observe(size)
        self.inference.observe(run_seconds)
        for seconds in queued_seconds:
            self.queued.observe(seconds)

    def shed(self, reason: str, count: int) -> None:
        self.shed_counter.labels(reason=reason, model=self.model).inc(count)


@functools.cache
def metrics() -> Metrics:
    """The process's metrics (created once)."""
    from prometheus_client import Counter, Gauge, Histogram

    return Metrics(
        stage_seconds=Histogram(
            "graft_stage_duration_seconds",
            "Time per image (decode; preprocess: resize and crop; normalize; queue: waiting in the "
            "batcher) or per executed batch (inference)",
            labelnames=("stage", "model"), buckets=_SECONDS,
        ),
        batch_size=Histogram(
            "graft_batch_size", "Images per executed ONNX Runtime batch (before bucket padding)",
            labelnames=("model",), buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        ),
        queue_depth=Gauge(
            "graft_queue_depth", "Images waiting in the model's batcher (summed over workers)",
            labelnames=("model",), multiprocess_mode="livesum",
        ),
        shed=Counter(
            "graft_shed_images", "Images refused without running: queue_full (429), deadline (503), "
            "client_gone (the client disconnected)",
            labelnames=("reason", "model"),
        ),
        cache_lookups=Counter(
            "graft_cache_lookups", "Images looked up in the exact-content cache (GRAFT_CACHE_MB): hit (no "
            "decoding, no model) or miss",
            labelnames=("result", "model"),
        ),
    )
