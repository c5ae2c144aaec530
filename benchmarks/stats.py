"""Small pure helpers for summarising timings."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default).

    Raises:
        ValueError: no values, or q outside [0, 100].
    """
    if not values:
        raise ValueError("expected at least one value, got none")
    if not 0 <= q <= 100:
        raise ValueError(f"expected a percentile in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Iterable[float], quantiles: Iterable[float] = PERCENTILES) -> dict[str, float]:
    """Latencies in seconds -> {"p50": ms, ..., "mean": ms}; empty input gives an empty dict."""
    values = list(seconds)
    if not values:
        return {}
    summary = {f"p{q:g}": percentile(values, q) * 1e3 for q in quantiles}
    summary["mean"] = sum(values) / len(values) * 1e3
    return summary
