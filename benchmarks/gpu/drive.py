"""Closed-loop load from several processes at once.

One asyncio driver (`graft.benchmarks.load`) spends a fraction of a CPU-millisecond per upload, so
alone it caps near the rates a GPU service is expected to reach. Each process here runs that same
driver with its share of the clients; two barriers line them up, so every process has its
keep-alive connections open before the caller's `on_start` (a `/metrics` scrape) and all start
timing together. Latencies and errors are merged, and throughput is counted over the longest span.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Callable, Sequence

BARRIER_S = 120.0
"""Longest wait for every process to connect (and, after it, to start) before the cell is given up."""
MAX_REQUESTS = 10_000_000
"""Cells are bound by time; this only keeps `run_load`'s request bound out of the way."""


def _share(url: str, files: Sequence[Path], form: dict, clients: int, seconds: float, barriers, results) -> None:
    from graft.benchmarks.load import Workload, run_load

    def start() -> None:
        for barrier in barriers:
            barrier.wait(BARRIER_S)

    results.put(run_load(Workload(url, files, form=form), concurrency=clients, max_requests=MAX_REQUESTS,
                         max_seconds=seconds, on_measure_start=start, label=f"{url} c={clients}"))


def drive(url: str, files: Sequence[Path], *, concurrency: int, seconds: float, processes: int,
          form: dict[str, str], on_start: Callable[[], None]):
    """`concurrency` closed-loop clients posting `files` to `url`, spread over up to `processes`
    processes; returns one merged `graft.benchmarks.load.LoadResult`."""
    from graft.benchmarks.load import LoadResult

    shares = [n for n in (concurrency // processes + (k < concurrency % processes) for k in range(processes)) if n]
    context = multiprocessing.get_context("spawn")  # the caller may hold CUDA and threads: no fork
    barriers = (context.Barrier(len(shares) + 1), context.Barrier(len(shares) + 1))
    results = context.Queue()
    workers = [context.Process(target=_share, args=(url, list(files), form, n, seconds, barriers, results), daemon=True)
               for n in shares]
    for worker in workers:
        worker.start()
    try:
        barriers[0].wait(BARRIER_S)
        on_start()
        barriers[1].wait(BARRIER_S)
        parts = [results.get(timeout=2 * seconds + BARRIER_S) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
    merged = LoadResult(concurrency, 1, duration_s=max(p.duration_s for p in parts), unfinished=sum(p.unfinished for p in parts))
    for part in parts:
        merged.latencies += part.latencies
        merged.errors.update(part.errors)
        for error, latencies in part.error_latencies.items():
            merged.error_latencies.setdefault(error, []).extend(latencies)
    return merged
