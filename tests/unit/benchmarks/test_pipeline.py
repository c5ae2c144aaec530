"""The pipeline ceiling's result shape on a few real JPEGs (not a timing test)."""

from __future__ import annotations

import pytest

from graft.benchmarks.pipeline import Ceiling, pipeline_ceiling


def test_pipeline_ceiling_reports_every_batch_size(lite0_classifier, photo_jpegs):
    blobs = [path.read_bytes() for path in photo_jpegs.values()]
    ceiling = pipeline_ceiling(lite0_classifier, blobs, batch_sizes=(1, 4), seconds=0.01, latency_samples=3)
    assert isinstance(ceiling, Ceiling)
    assert [f.batch_size for f in ceiling.per_batch] == [1, 4]
    assert ceiling.concurrent_batches == 1  # as the service's batcher runs by default
    assert all(f.images >= f.batch_size and f.images_per_second > 0 for f in ceiling.per_batch)
    assert ceiling.images_per_second == max(f.images_per_second for f in ceiling.per_batch)
    assert ceiling.batch_size in (1, 4)
    assert ceiling.batch1_p50_ms > 0
    assert ceiling.provider == "CPUExecutionProvider"
    assert ceiling.distinct_images == len(blobs)
    assert ceiling.to_dict()["per_batch"][1]["batch_size"] == 4


def test_with_two_batches_in_flight_every_loop_counts(lite0_classifier, photo_jpegs):
    blobs = [path.read_bytes() for path in photo_jpegs.values()]
    ceiling = pipeline_ceiling(lite0_classifier, blobs, batch_sizes=(2,), concurrent_batches=2, seconds=0.01,
                               latency_samples=1)
    assert ceiling.concurrent_batches == 2
    assert ceiling.per_batch[0].images >= 2 * 2  # each loop ran at least one batch, and both count


def test_pipeline_ceiling_needs_images(lite0_classifier):
    with pytest.raises(ValueError, match="expected images"):
        pipeline_ceiling(lite0_classifier, [])
