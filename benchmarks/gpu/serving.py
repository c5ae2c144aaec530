"""The service stage: one artifact served by `graft serve` on this machine, measured as clients see it.

In order: raw ONNX Runtime on preprocessed 224-px JPEGs with the provider the service prefers (the
ceiling the service is compared with); a first ("cold") start of `graft serve` timed to `/readyz`;
closed-loop load on `/classify` with real 224-px JPEGs, one image per request, at each concurrency,
from several driver processes on the same machine; a second ("warm") start; then the GPU issue's
targets for this model (the report lists them first).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

from context import Context, StageFailed
from drive import drive
from plan import split_key

logger = logging.getLogger("graft.gpu")

ALL_READY_S = 60.0
"""How long a started server's workers get to all answer `/readyz` after the first one did."""


def _all_ready(url: str, workers: int) -> None:
    """Wait until `/readyz` has answered 200 on 2 x `workers` fresh connections in a row: each
    connection lands on one worker, and a worker still warming up answers 503."""
    import httpx

    deadline, streak = time.monotonic() + ALL_READY_S, 0
    while streak < 2 * workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"expected all {workers} workers at {url} to be ready within {ALL_READY_S:.0f} s")
        streak = streak + 1 if httpx.get(f"{url}/readyz", timeout=5.0, trust_env=False).status_code == 200 else 0
        time.sleep(0.02)


@contextlib.contextmanager
def _started(ctx: Context, artifact: Path, which: str) -> Iterator[str]:
    """`graft serve` with the plan's workers; records how long it took to be ready, once and for all workers."""
    from graft.benchmarks.service_bench import Server, free_port, graft_argv

    port = free_port()
    argv = [*graft_argv(artifact, port), "--workers", str(ctx.plan.workers)]
    started = time.monotonic()
    with Server("graft", argv, port, ctx.folder / f"server-{which}.log") as server:
        first = time.monotonic() - started
        _all_ready(server.url, ctx.plan.workers)
        ctx.result["starts"].append({"which": which, "first_ready_s": round(first, 2),
                                     "all_ready_s": round(time.monotonic() - started, 2)})
        ctx.save()
        yield server.url


def _cell(url: str, files: list[Path], concurrency: int, ctx: Context) -> dict:
    from graft.benchmarks import metrics
    from graft.benchmarks.service_bench import scrape

    before: dict = {}
    load = drive(f"{url}/classify", files, concurrency=concurrency, seconds=ctx.plan.cell_s,
                 processes=ctx.plan.drivers, form={"top_k": "5"}, on_start=lambda: before.update(scrape(url)))
    change = metrics.diff(scrape(url), before)
    stages = metrics.stage_seconds(change)
    row = {"server": "graft", "endpoint": "classify", "size": "224", **load.figures(),
           "batch": metrics.batch_sizes(change), "stages": stages, "stage_split": metrics.stage_split(stages, len(load.latencies))}
    logger.info("%d clients: %.1f images/s, p99 %.1f ms, errors %s", concurrency, row["images_per_s"],
                row["latency_ms"].get("p99", float("nan")), row["errors"] or 0)
    return row


def _target(name: str, value: float | None, threshold: float | None, met: bool | None, detail: str) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "met": None if value is None else met, "detail": detail}


def targets(key: str, result: dict, ctx: Context) -> list[dict]:
    """Best images/s among the cells with p99 under the target, the warm start, and the service's
    share of the raw ONNX Runtime ceiling (reported; the issue sets no threshold on it)."""
    goal = ctx.plan.targets
    fast = [c for c in result.get("cells", []) if not c["errors"] and c["latency_ms"].get("p99", goal.p99_ms) < goal.p99_ms]
    best = max(fast, key=lambda c: c["images_per_s"], default=None)
    warm = next((s["all_ready_s"] for s in result.get("starts", []) if s["which"] == "warm"), None)
    ceiling = result["ceiling"]["best"]["images_per_s"] if result.get("ceiling") else None
    top = max((c["images_per_s"] for c in result.get("cells", [])), default=None)
    return [
        _target(f"{key}: images/s at the best concurrency with p99 < {goal.p99_ms:.0f} ms",
                best and round(best["images_per_s"], 1), goal.images_per_s, best and best["images_per_s"] >= goal.images_per_s,
                f"{best['concurrency']} clients, p99 {best['latency_ms']['p99']:.1f} ms" if best else "no cell without errors had that p99"),
        _target(f"{key}: warm start to /readyz (all workers)", warm, goal.warm_start_s, warm is not None and warm <= goal.warm_start_s,
                "second start of the same server: artifacts on disk, page cache warm"),
        _target(f"{key}: service / raw ONNX Runtime ceiling", top and ceiling and round(top / ceiling, 3), None, None,
                f"best service images/s / {ceiling and round(ceiling, 1)} images/s ({result.get('ceiling', {}).get('engine')}, "
                f"batch {result.get('ceiling', {}).get('best', {}).get('batch_size')})"),
    ]


def service(ctx: Context, key: str) -> None:
    from graft.benchmarks.images import make_jpegs
    from graft.benchmarks.model_bench import Timing, ceiling
    from graft.benchmarks.report import ceiling_table, service_table

    try:
        artifact = ctx.artifact(key)
    except StageFailed as missing:  # the other precision's figures beat none
        backbone, precision = split_key(key)
        key = f"{backbone}-{'fp32' if precision == 'fp16' else 'fp16'}"
        artifact = ctx.artifact(key)
        ctx.result["instead"] = f"{missing}: served {key} instead"
    files = make_jpegs(ctx.work / "jpegs", ("224",))["224"]
    # TensorRT, where it exists, keeps its engines here between runs: the warm start reuses them.
    os.environ["GRAFT_TRT_CACHE_DIR"] = str(ctx.work / "trt-cache")
    ctx.result.update(key=key, workers=ctx.plan.workers, drivers=ctx.plan.drivers, starts=[], cells=[])
    ctx.result["ceiling"] = ceiling(artifact, files, ctx.plan.ceiling_batch_sizes, ctx.work / "ort-cache",
                                    Timing(**ctx.plan.timing))
    ctx.save()
    try:
        with _started(ctx, artifact, "cold") as url:
            import httpx

            ctx.result["served"] = httpx.get(f"{url}/models", timeout=10.0, trust_env=False).json()["models"]
            for concurrency in ctx.plan.concurrency:
                ctx.result["cells"].append(_cell(url, files, concurrency, ctx))
                ctx.save()
        with _started(ctx, artifact, "warm"):
            pass
    finally:
        ctx.result["targets"] = targets(key, ctx.result, ctx)
        providers = ", ".join(sorted({m.get("provider", "?") for m in ctx.result.get("served", [])})) or "unknown"
        starts = "; ".join(f"{s['which']} {s['first_ready_s']} s (all workers {s['all_ready_s']} s)" for s in ctx.result["starts"])
        ctx.parts += [
            f"## Service: {key}" + (f" ({ctx.result['instead']})" if "instead" in ctx.result else ""),
            f"`graft serve --workers {ctx.plan.workers}` on {providers} (its `GET /models`); /classify with real "
            f"224-px JPEGs, one image per request, {ctx.plan.cell_s:g} s per cell, clients spread over "
            f"{ctx.plan.drivers} load processes on this machine. Start-up to /readyz (polled every 0.5 s): {starts or 'none'}.",
        ]
        if "ceiling" in ctx.result:  # engine names give the provider's own setting; the graph is the artifact's
            ctx.parts.append(f"Raw ONNX Runtime on the {key} graph, preprocessed JPEGs (the ceiling):\n\n"
                             + ceiling_table(ctx.result["ceiling"]))
        if ctx.result["cells"]:
            ctx.parts.append(service_table(ctx.result["cells"]))
