"""The in-process pipeline ceiling: how fast one process turns JPEG bytes into model outputs.

Decode + preprocess run in a thread pool (Pillow releases the GIL) while ONNX Runtime runs the
previous batch, with the session settings the service uses (`Runner`, CPU provider, intra-op
spinning as `GRAFT_INTRA_OP_SPINNING` says, as many batches in flight as its batcher runs at once).
No HTTP, no Ray, no queues beyond the batches in flight: anything that serves or batch-processes the
same bytes on the same machine is measured against this figure.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from graft.artifact.image import DEFAULT_MAX_PIXELS, decode_image
from graft.artifact.manifest import read_manifest
from graft.artifact.preprocessing import PreprocessingSpec, crop, normalize
from graft.artifact.runtime import Runner
from graft.service.config import ServeConfig

DEFAULT_BATCH_SIZES = (1, 8, 16, 32, 64)


@dataclass(frozen=True)
class BatchFigure:
    """Throughput at one batch size."""

    batch_size: int
    images: int
    seconds: float
    images_per_second: float


@dataclass(frozen=True)
class Ceiling:
    """The pipeline ceiling over several batch sizes.

    Attributes:
        images_per_second: the best throughput over the batch sizes tried.
        batch_size: the batch size that gave it.
        batch1_p50_ms: median latency of one image alone: decode + preprocess + inference.
        per_batch: throughput at every batch size tried, in the order given.
        decode_threads: threads decoding and preprocessing.
        intra_op_threads: ONNX Runtime intra-op threads (0: one per physical core).
        concurrent_batches: batches run at once on the session, each with the next one decoding.
        provider: the execution provider the session ran on.
        distinct_images: how many different encoded images were cycled through.
    """

    images_per_second: float
    batch_size: int
    batch1_p50_ms: float
    per_batch: tuple[BatchFigure, ...]
    decode_threads: int
    intra_op_threads: int
    concurrent_batches: int
    provider: str
    distinct_images: int

    def to_dict(self) -> dict:
        return asdict(self)


def _prepare(data: bytes, spec: PreprocessingSpec) -> np.ndarray:
    # The service's per-image path: decode (draft mode, EXIF, RGB) then resize and crop to uint8.
    return crop(decode_image(data, min_side=spec.resize_size, max_pixels=DEFAULT_MAX_PIXELS), spec)


def _throughput(
    runner: Runner, pool: ThreadPoolExecutor, blobs: Iterator[bytes], batch_size: int, seconds: float, concurrency: int,
) -> BatchFigure:
    spec = runner.manifest.image_spec
    taking = threading.Lock()  # the loops share one cycle of images

    def submit() -> list[Future]:
        with taking:
            data = [next(blobs) for _ in range(batch_size)]
        return [pool.submit(_prepare, item, spec) for item in data]

    def gather(futures: list[Future]) -> np.ndarray:
        return normalize(np.stack([f.result() for f in futures]), spec)

    runner.infer(gather(submit()))  # first run of this shape: not timed
    started = time.perf_counter()

    def loop() -> tuple[int, float]:
        pending = submit()
        images = 0
        while True:
            batch = gather(pending)
            pending = submit()  # decoded while this batch runs
            runner.infer(batch)
            images += batch_size
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
        for future in pending:  # let the pool drain so the next batch size starts on idle cores
            future.result()
        return images, elapsed

    with ThreadPoolExecutor(concurrency, thread_name_prefix="batch") as loops:
        counts = list(loops.map(lambda _: loop(), range(concurrency)))
    images = sum(count for count, _ in counts)
    elapsed = max(took for _, took in counts)
    return BatchFigure(batch_size, images, round(elapsed, 3), round(images / elapsed, 2))


def pipeline_ceiling(
    artifact_dir: str | Path,
    blobs: Sequence[bytes],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    decode_threads: int | None = None,
    intra_op_threads: int = 0,
    concurrent_batches: int | None = None,
    seconds: float = 5.0,
    latency_samples: int = 20,
) -> Ceiling:
    """Measure decode + preprocess + batched ONNX Runtime in one process on the given encoded images.

    Args:
        artifact_dir: the artifact (model.onnx + manifest.json).
        blobs: encoded images (JPEG bytes), cycled through as long as needed.
        batch_sizes: batch sizes to measure, each for about `seconds`.
        decode_threads: decoding threads; default as the service's (`GRAFT_DECODE_THREADS`).
        intra_op_threads: ORT intra-op threads; 0: one per physical core.
        concurrent_batches: batches in flight at once; default as the service's batcher
            (`GRAFT_CONCURRENT_BATCHES`).
        seconds: measuring time per batch size (at least one batch is always run).
        latency_samples: single images timed for the batch-1 latency.

    Raises:
        ValueError: no images or no batch sizes.
    """
    if not blobs or not batch_sizes:
        raise ValueError(f"expected images and batch sizes, got {len(blobs)} images, batch sizes {list(batch_sizes)}")
    directory = Path(artifact_dir)
    manifest = read_manifest(directory)
    runner = Runner(
        directory, manifest, buckets=tuple(sorted(set(batch_sizes))), providers=("CPUExecutionProvider",),
        intra_op_threads=intra_op_threads, trt_cache_dir=directory / ".trt-unused", **ServeConfig().session_spinning(),
    )
    threads = decode_threads or ServeConfig().decode_threads
    concurrency = concurrent_batches or ServeConfig().concurrent_batches
    spec = manifest.image_spec
    cycle = itertools.cycle(blobs)
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        figures = tuple(_throughput(runner, pool, cycle, size, seconds, concurrency) for size in batch_sizes)
    latencies = []
    runner.infer(normalize(_prepare(next(cycle), spec)[None], spec))  # first batch-1 run: not timed
    for _ in range(latency_samples):
        started = time.perf_counter()
        runner.infer(normalize(_prepare(next(cycle), spec)[None], spec))
        latencies.append((time.perf_counter() - started) * 1e3)
    best = max(figures, key=lambda f: f.images_per_second)
    return Ceiling(
        images_per_second=best.images_per_second, batch_size=best.batch_size,
        batch1_p50_ms=round(statistics.median(latencies), 2), per_batch=figures, decode_threads=threads,
        intra_op_threads=intra_op_threads, concurrent_batches=concurrency, provider=runner.provider,
        distinct_images=len(set(blobs)),
    )
