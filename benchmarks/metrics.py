"""Read the service's Prometheus `/metrics`: histograms, their change over a run, what they say.

The service exports an executed batch-size histogram and per-stage time histograms (decode,
preprocess, normalize, inference), labelled by model. The harness scrapes before and after each load cell and
diffs, so every figure covers exactly that cell's requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

STAGES = ("decode", "preprocess", "normalize", "inference")


@dataclass
class Histogram:
    """One labelled histogram series: cumulative bucket counts by upper bound, sum and count."""

    name: str
    labels: dict[str, str]
    buckets: dict[float, float] = field(default_factory=dict)
    sum: float = 0.0
    count: float = 0.0

    def minus(self, earlier: Histogram | None) -> Histogram:
        """This series' increase since `earlier` (a series absent before counts from zero)."""
        if earlier is None:
            return self
        return Histogram(
            self.name,
            self.labels,
            {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.sum - earlier.sum,
            self.count - earlier.count,
        )

    def distribution(self) -> dict[str, int]:
        """Observations per bucket, not cumulative: {"1": n, "2": n, ..., "+Inf": n}; empty buckets left out."""
        out: dict[str, int] = {}
        previous = 0.0
        for le in sorted(self.buckets):
            n = self.buckets[le] - previous
            previous = self.buckets[le]
            if n > 0:
                out["+Inf" if math.isinf(le) else f"{le:g}"] = int(round(n))
        return out

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None


Key = tuple[str, tuple[tuple[str, str], ...]]


def parse_histograms(text: str) -> dict[Key, Histogram]:
    """Every histogram series in a Prometheus text exposition, keyed by (name, sorted labels)."""
    series: dict[Key, Histogram] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            key = (family.name, tuple(sorted(labels.items())))
            hist = series.setdefault(key, Histogram(family.name, labels))
            if sample.name.endswith("_bucket"):
                hist.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                hist.sum = sample.value
            elif sample.name.endswith("_count"):
                hist.count = sample.value
    return series


def diff(after: dict[Key, Histogram], before: dict[Key, Histogram]) -> dict[Key, Histogram]:
    """Per-series increase from `before` to `after`."""
    return {key: hist.minus(before.get(key)) for key, hist in after.items()}


def batch_sizes(hists: dict[Key, Histogram]) -> dict | None:
    """The executed batch-size histogram (`graft_batch_size`, else any metric named '*batch_size*'),
    merged over its series (models): {"batches", "mean", "distribution"}; None when none exists."""
    found = [h for h in hists.values() if "batch_size" in h.name]
    # graft's own histogram counts images per ONNX Runtime run; BentoML's `adaptive_batch_size`
    # (merged calls per batch) is the fallback for a service without one.
    found = [h for h in found if h.name.startswith("graft_")] or found
    if not found:
        return None
    merged = Histogram(found[0].name, {})
    for hist in found:
        merged.sum += hist.sum
        merged.count += hist.count
        for le, n in hist.buckets.items():
            merged.buckets[le] = merged.buckets.get(le, 0.0) + n
    return {"batches": int(merged.count), "mean": merged.mean, "distribution": merged.distribution()}


def _stage(hist: Histogram) -> str | None:
    stage = hist.labels.get("stage")
    if stage in STAGES:
        return stage
    return next((s for s in STAGES if s in hist.name), None)


def stage_seconds(hists: dict[Key, Histogram]) -> dict[str, dict] | None:
    """Server time per stage from the stage histograms (a `stage` label, or the stage's name in the
    metric name), summed over models: {stage: {"seconds", "observations"}}; None when there are none.

    The benchmark serves one model, so every series is its; against `--url` a multi-model service's
    other traffic during a cell would be counted too."""
    out: dict[str, dict] = {}
    for hist in hists.values():
        stage = _stage(hist)
        if stage is None or "batch_size" in hist.name:
            continue
        entry = out.setdefault(stage, {"seconds": 0.0, "observations": 0})
        entry["seconds"] += hist.sum
        entry["observations"] += int(hist.count)
    return out or None


def stage_split(stages: dict[str, dict] | None, images: int) -> dict[str, dict] | None:
    """Each stage's share of the summed stage time and its milliseconds per image."""
    if not stages:
        return None
    total = sum(entry["seconds"] for entry in stages.values())
    return {
        stage: {
            "share": entry["seconds"] / total if total else 0.0,
            "ms_per_image": entry["seconds"] / images * 1e3 if images else None,
        }
        for stage, entry in stages.items()
    }
