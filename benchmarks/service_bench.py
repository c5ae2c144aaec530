"""`graft bench service`: graft's service and the naive baseline under the same closed-loop load.

One run measures, on the same machine and in this order (so nothing competes for the CPU):
1. the model ceiling: raw ONNX Runtime on preprocessed real images at its best batch size;
2. the pipeline ceiling: the same JPEG bytes decoded, preprocessed and run in one process with the
   service's functions and session settings, no HTTP (`graft.benchmarks.pipeline`);
3. graft's service (started with `graft serve` on a free loopback port, or `--url`): every cell of
   endpoint x image size x concurrency, each bracketed by `/metrics` scrapes whose difference gives
   the executed batch sizes and the server time per stage for exactly that cell's requests; then
   the overload cell (far more clients than the service admits; refused clients honour Retry-After)
   and the retry-storm cell (as many clients, retrying at once on a 429);
4. the baseline server (`benchmarks.baseline_server`) with the same cells;
then the serving-core targets, each met or missed with its ratio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import httpx
import psutil

from graft.artifact.manifest import read_manifest
from graft.benchmarks import metrics, profile
from graft.benchmarks.images import make_jpegs
from graft.benchmarks.load import Workload, require_loopback, run_load
from graft.benchmarks.model_bench import QUICK_TIMING, Timing, ceiling
from graft.benchmarks.pipeline import pipeline_ceiling

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0
PROFILE_CLIENTS = 16
"""With `--profile`, the /classify cells at this many clients are recorded with py-spy."""


@dataclass(frozen=True)
class Cell:
    endpoint: str
    size: str
    concurrency: int
    mode: str = "closed"
    """closed: every client sends its next request on an answer; overload: a refused client waits
    as its 429's Retry-After says; storm: a refused client retries at once (no back-off)."""


@dataclass(frozen=True)
class Plan:
    """Which cells run and how long each is; `quick` is the CI smoke test's plan."""

    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    overload_concurrency: int | None = 200
    """graft only: /classify 224-px at this many clients, far past what it admits (None: skip); refused
    clients wait as their 429's `Retry-After` says, as a well-behaved client does."""
    overload_max_requests: int = 5000
    """The overload cell runs for `max_seconds` like the others, but may send this many requests:
    with 200 clients, 600 requests would measure little more than the first connection storm."""
    storm_concurrency: int | None = 200
    """graft only: /classify 224-px at this many clients that retry at once on a 429 (None: skip); it
    runs for `max_seconds` with no request limit (refusals are what it sends most)."""
    sizes: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"classify": ("224", "640", "2000"), "embed": ("224",)}
    )
    max_requests: int = 600
    max_seconds: float = 8.0
    images_per_request: int = 1
    ceiling_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    ceiling_timing: Timing = Timing()

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            concurrency=(1, 16),
            sizes={"classify": ("224", "2000"), "embed": ("224",)},
            max_requests=16,
            max_seconds=2.0,
            ceiling_batch_sizes=(1, 8),
            ceiling_timing=QUICK_TIMING,
            overload_concurrency=None,
            storm_concurrency=None,
            pipeline_seconds=0.5,
            large_pipeline_batch_sizes=(8,),
        )

    pipeline_seconds: float = 5.0
    large_pipeline_batch_sizes: tuple[int, ...] = (8, 16, 32)
    """Batch sizes for the pipeline ceiling on 2000-px JPEGs (measured when the plan has that size):
    the most any server on this machine can do with them, the bound on the 2000-px target."""

    endpoint: str = "classify"
    """Where the overload and storm cells and the targets send their images."""

    def for_task(self, task: str) -> Plan:
        """The plan for an embedder (which has no /classify): every size on /embed."""
        if task != "embedder":
            return self
        sizes = tuple(sorted({size for sizes in self.sizes.values() for size in sizes}, key=int))
        return replace(self, sizes={"embed": sizes}, endpoint="embed")

    def cells(self, server: str) -> list[Cell]:
        cells = [
            Cell(endpoint, size, concurrency)
            for endpoint, sizes in self.sizes.items()
            for size in sizes
            for concurrency in self.concurrency
        ]
        if server == "graft" and self.overload_concurrency:
            cells.append(Cell(self.endpoint, "224", self.overload_concurrency, "overload"))
        if server == "graft" and self.storm_concurrency:
            cells.append(Cell(self.endpoint, "224", self.storm_concurrency, "storm"))
        return cells


# ---- servers ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server subprocess in its own process group, ready once `GET /readyz` answers 200."""

    def __init__(self, name: str, argv: Sequence[str], port: int, log_path: Path):
        self.name = name
        self.argv = list(argv)
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"expected {self.name} to be started")
        return self.process.pid

    def __enter__(self) -> Server:
        logger.info("starting %s: %s (log: %s)", self.name, " ".join(self.argv), self.log_path)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        started = time.monotonic()
        try:
            wait_ready(self.url, self.process, READY_TIMEOUT_S)
        except BaseException:
            self.__exit__()
            raise
        logger.info("%s ready in %.1f s", self.name, time.monotonic() - started)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            # NOTE: BentoML starts its workers in sessions of their own, out of reach of a signal to the
            # server's process group: note them first, and kill whichever outlive the server (a server
            # stopped while its workers start can take longer than this wait and leave them behind).
            workers = psutil.Process(self.process.pid).children(recursive=True)
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            for worker in workers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.kill()
        self._log.close()


def wait_ready(url: str, process: subprocess.Popen | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll `url/readyz` until 200; raise if `process` exits first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"expected the server at {url} to start, but it exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"expected {url}/readyz to answer 200 within {timeout_s:.0f} s")


def graft_argv(model: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "graft.cli", "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]


def baseline_argv(model: Path, port: int, threads: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "graft.benchmarks.baseline_server", "--model", str(model), "--port", str(port)]
    return argv + ["--threads", str(threads)] if threads else argv


# ---- load cells ---------------------------------------------------------------------------------
def scrape(url: str) -> dict:
    response = httpx.get(f"{url}/metrics", timeout=10.0, trust_env=False)
    response.raise_for_status()
    return metrics.parse_histograms(response.text)


def run_cells(
    server: str,
    url: str,
    files: dict[str, list[Path]],
    plan: Plan,
    *,
    with_metrics: bool,
    profile_pid: int | None = None,
    profile_dir: Path = Path("."),
) -> list[dict]:
    """Every cell of `plan` against one server; one figures row per cell.

    With `profile_pid`, the /classify cells at `PROFILE_CLIENTS` clients are sampled by py-spy
    (which slows the server: profile in a separate run from the one whose figures you report).
    """
    rows = []
    cells = plan.cells(server)
    for number, cell in enumerate(cells, 1):
        workload = Workload(
            url=f"{url}/{cell.endpoint}",
            files=files[cell.size],
            images_per_request=plan.images_per_request,
            form={"top_k": "5"} if cell.endpoint == "classify" else {},
        )
        before: dict = {}
        recording: list = []
        profiled = profile_pid is not None and cell.endpoint == "classify" and cell.concurrency == PROFILE_CLIENTS
        profile_file = profile_dir / f"profile-{server}-{cell.endpoint}-{cell.size}-c{cell.concurrency}.txt"

        def on_measure_start() -> None:
            if with_metrics:
                before.update(scrape(url))
            if profiled and profile_pid is not None:
                recording.append(profile.start(profile_pid, plan.max_seconds, profile_file))

        mode = "" if cell.mode == "closed" else f" {cell.mode}"
        label = f"{server} /{cell.endpoint} {cell.size}px c={cell.concurrency}{mode} [{number}/{len(cells)}]"
        max_requests = {"closed": plan.max_requests, "overload": plan.overload_max_requests}.get(cell.mode, 10**7)
        driver_cpu = time.process_time()
        result = run_load(
            workload,
            concurrency=cell.concurrency,
            max_requests=max_requests,
            max_seconds=plan.max_seconds,
            on_measure_start=on_measure_start,
            label=label,
            honor_retry_after=cell.mode == "overload",
        )
        row = {"server": server, **asdict(cell), **result.figures(),
               # How the driver and the server shared the machine's cores during the cell.
               "driver_cpu_s": time.process_time() - driver_cpu}
        if recording:
            row["profile"] = profile.finish(recording[0], profile_file)
        if with_metrics:
            change = metrics.diff(scrape(url), before)
            images = len(result.latencies) * plan.images_per_request
            row["batch"] = metrics.batch_sizes(change)
            row["stages"] = metrics.stage_seconds(change)
            row["stage_split"] = metrics.stage_split(row["stages"], images)
        logger.info(
            "%s: %.1f images/s, p50 %.1f ms, p99 %.1f ms, errors %s%s", label, row["images_per_s"],
            row["latency_ms"].get("p50", float("nan")), row["latency_ms"].get("p99", float("nan")),
            row["errors"] or 0,
            f", mean batch {row['batch']['mean']:.1f}" if row.get("batch") and row["batch"]["mean"] else "",
        )
        rows.append(row)
    return rows


# ---- targets ------------------------------------------------------------------------------------
def _find(rows: list[dict], server: str, endpoint: str, size: str, concurrency: int, mode: str = "closed") -> dict | None:
    return next(
        (r for r in rows if (r["server"], r["endpoint"], r["size"], r["concurrency"], r.get("mode", "closed")) ==
         (server, endpoint, size, concurrency, mode)),
        None,
    )


def _target(name: str, value: float | None, threshold: float, higher_is_better: bool, detail: str) -> dict:
    if value is None:
        return {"name": name, "value": None, "threshold": threshold, "met": None, "detail": detail + " (not measured)"}
    met = value >= threshold if higher_is_better else value <= threshold
    return {"name": name, "value": value, "threshold": threshold, "met": met, "detail": detail}


def evaluate_targets(
    rows: list[dict], pipeline: dict | None, overload: int | None, clients: int = 16, *,
    large_pipeline: dict | None = None, storm: int | None = None, endpoint: str = "classify",
) -> list[dict]:
    """The serving-core targets (Lite0, 224-px JPEGs, /classify) from one run's figures.

    `large_pipeline`, the pipeline ceiling on 2000-px JPEGs, bounds the 2000-px target: no server
    on this machine decodes and runs them faster, so its ratio to the 224-px service rate is the
    highest the target's ratio can be here.
    """
    graft = _find(rows, "graft", endpoint, "224", clients)
    baseline = _find(rows, "baseline", endpoint, "224", clients)
    single = _find(rows, "graft", endpoint, "224", 1)
    large = _find(rows, "graft", endpoint, "2000", clients)
    busy = _find(rows, "graft", endpoint, "224", 64)
    flooded = _find(rows, "graft", endpoint, "224", overload, "overload") if overload else None
    best = pipeline["images_per_second"] if pipeline else None
    batch1 = pipeline["batch1_p50_ms"] if pipeline else None

    def ratio(a: dict | None, b: float | None) -> float | None:
        return a["images_per_s"] / b if a and b else None

    def rate(cell: dict | None) -> float | None:
        return cell["images_per_s"] if cell else None

    p50 = single["latency_ms"].get("p50") if single else None
    targets = [
        _target(
            f"service at {clients} clients >= 0.85x the pipeline ceiling", ratio(graft, best), 0.85, True,
            f"graft images/s / pipeline ceiling ({best and round(best, 1)} images/s)",
        ),
        _target(
            f"graft >= 3.5x baseline at {clients} clients", ratio(graft, rate(baseline)), 3.5,
            True, "graft images/s / baseline images/s",
        ),
        _target(
            "p50 at 1 client <= pipeline batch-1 latency + 3 ms",
            p50 / (batch1 + 3.0) if p50 is not None and batch1 is not None else None, 1.0, False,
            f"p50 {p50 and round(p50, 1)} ms / ({batch1 and round(batch1, 1)} ms + 3 ms)",
        ),
        _target(
            f"2000-px images/s >= 0.7x 224-px at {clients} clients",
            ratio(large, rate(graft)), 0.7, True, "2000-px images/s / 224-px images/s" + (
                f"; at most {large_pipeline['images_per_second'] / graft['images_per_s']:.2f} on this machine (the "
                f"2000-px pipeline ceiling, {large_pipeline['images_per_second']:.1f} images/s, / 224-px images/s)"
                if large_pipeline and graft and graft["images_per_s"] else ""
            ),
        ),
    ]
    if overload:
        refused = (flooded or {}).get("error_latency_ms", {}).get("429", {}).get("p99")
        accepted = flooded and flooded["latency_ms"].get("p99")
        reference = busy and busy["latency_ms"].get("p99")
        failures = sum(n for e, n in (flooded or {}).get("errors", {}).items() if e not in ("429",)) if flooded else None
        targets += [
            _target(f"429s at {overload} clients answered in <= 100 ms at p99", refused, 100.0, False,
                    f"p99 of the 429 answers, ms ({(flooded or {}).get('errors', {}).get('429', 0)} refused)"),
            _target(f"accepted p99 at {overload} clients <= 2x p99 at 64 clients",
                    accepted / reference if accepted and reference else None, 2.0, False,
                    f"p99 {accepted and round(accepted)} ms / p99 {reference and round(reference)} ms"),
            _target(f"no 5xx and no dropped connections at {overload} clients", failures, 0, False,
                    f"errors other than 429: {({e: n for e, n in (flooded or {}).get('errors', {}).items() if e != '429'})}"),
        ]
    if storm:
        stormed = _find(rows, "graft", endpoint, "224", storm, "storm")
        targets.append(_target(
            f"accepted images/s with {storm} clients retrying at once >= 0.8x {clients} clients",
            ratio(stormed, rate(graft)), 0.8, True,
            f"{stormed and round(stormed['images_per_s'], 1)} / {graft and round(graft['images_per_s'], 1)} images/s "
            f"({(stormed or {}).get('errors', {}).get('429', 0)} refused)",
        ))
    return targets


# ---- the run ------------------------------------------------------------------------------------
def bench_service(
    model: Path,
    out: Path,
    *,
    plan: Plan,
    url: str | None = None,
    baseline: bool = True,
    baseline_threads: int | None = None,
    profile_servers: bool = False,
) -> dict:
    """Ceiling, graft service, baseline and targets; returns everything the report needs."""
    manifest = read_manifest(model)
    plan = plan.for_task(manifest.task)
    files = make_jpegs(out / "images", tuple(sorted({s for sizes in plan.sizes.values() for s in sizes})))
    logger.info("ceiling: raw ONNX Runtime on preprocessed 224-px JPEGs, %s", model)
    ceiling_figures = ceiling(model, files["224"], plan.ceiling_batch_sizes, out / "ort-cache", plan.ceiling_timing)
    logger.info("pipeline ceiling: decode + preprocess + ONNX Runtime in one process, no HTTP")
    pipeline_figures = pipeline_ceiling(
        model, [path.read_bytes() for path in files["224"]], batch_sizes=plan.ceiling_batch_sizes,
        seconds=plan.pipeline_seconds,
    ).to_dict()
    large_pipeline = None
    if "2000" in files:
        logger.info("pipeline ceiling on 2000-px JPEGs: the bound on the 2000-px target")
        large_pipeline = pipeline_ceiling(
            model, [path.read_bytes() for path in files["2000"]], batch_sizes=plan.large_pipeline_batch_sizes,
            seconds=plan.pipeline_seconds,
        ).to_dict()
    rows: list[dict] = []
    servers: dict[str, str] = {}
    if url is not None:
        require_loopback(url)
        wait_ready(url)
        servers["graft"] = url
        if profile_servers:
            logger.warning("--profile needs a server this run starts; not profiling %s", url)
        rows += run_cells("graft", url, files, plan, with_metrics=True)
    else:
        with Server("graft", graft_argv(model, port := free_port()), port, out / "graft-server.log") as server:
            servers["graft"] = server.url
            rows += run_cells("graft", server.url, files, plan, with_metrics=True,
                              profile_pid=server.pid if profile_servers else None, profile_dir=out)
    if baseline:
        argv = baseline_argv(model, port := free_port(), baseline_threads)
        with Server("baseline", argv, port, out / "baseline-server.log") as server:
            servers["baseline"] = server.url
            rows += run_cells("baseline", server.url, files, plan, with_metrics=False,
                              profile_pid=server.pid if profile_servers else None, profile_dir=out)
    return {
        "kind": "service",
        "settings": {
            "model": str(model.resolve()),
            "model_name": manifest.name,
            "backbone": manifest.backbone,
            "precision": manifest.precision,
            "servers": servers,
            "plan": asdict(plan),
            "profiled": profile_servers,
            "baseline_threads": baseline_threads,
            "images": {size: [p.name for p in paths] for size, paths in files.items()},
        },
        "ceiling": ceiling_figures,
        "pipeline": pipeline_figures,
        "pipeline_2000": large_pipeline,
        "cells": rows,
        "targets": evaluate_targets(rows, pipeline_figures, plan.overload_concurrency, large_pipeline=large_pipeline,
                                    storm=plan.storm_concurrency, endpoint=plan.endpoint),
    }


def side_by_side(results: dict[str, dict], clients: tuple[int, ...] = (1, 16, 64)) -> list[dict]:
    """One row per benchmarked artifact (the first is the reference): precision, model and pipeline
    ceilings, and the service on 224-px JPEGs at each of `clients`, with ratios to the first."""
    rows = []
    for name, result in results.items():
        endpoint = result["settings"]["plan"]["endpoint"]
        row = {"model": name, "precision": result["settings"]["precision"],
               "model_ceiling": result["ceiling"]["best"]["images_per_s"],
               "pipeline_ceiling": result["pipeline"]["images_per_second"]}
        for count in clients:
            cell = _find(result["cells"], "graft", endpoint, "224", count) or {}
            row[f"c{count}"] = {"images_per_s": cell.get("images_per_s"), "p50": cell.get("latency_ms", {}).get("p50"),
                                "p99": cell.get("latency_ms", {}).get("p99")}
        rows.append(row)
    first = rows[0]
    for row in rows:
        row["ratios"] = {
            key: row[key] / first[key] if row[key] and first[key] else None for key in ("model_ceiling", "pipeline_ceiling")}
        for count in clients:
            mine, theirs = row[f"c{count}"], first[f"c{count}"]
            row["ratios"][f"c{count}_images_per_s"] = (
                mine["images_per_s"] / theirs["images_per_s"] if mine["images_per_s"] and theirs["images_per_s"] else None)
            row["ratios"][f"c{count}_p50"] = mine["p50"] / theirs["p50"] if mine["p50"] and theirs["p50"] else None
    return rows
