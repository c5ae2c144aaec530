"""`graft bench memory`: the memory of a server's whole process tree, at idle and under load.

A `graft serve` (or a running server, given its URL and its main process id) is sampled every
`interval` seconds with psutil: each process's RSS, and its USS and PSS (which count pages shared
between the supervisor and its worker once, not twice). The samples span an idle spell after the
server is ready, then closed-loop load (`graft.benchmarks.load`) on the route its default model
answers (/classify for a classifier, /embed for an embedder such as the INT8 default model); the
report gives each process's idle, peak and last figures, the tree's total, and how the total moved
over the load's last half (a steady server does not grow).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import httpx
import psutil

from graft.artifact.errors import GraftError
from graft.benchmarks.images import make_jpegs
from graft.benchmarks.load import Workload, require_loopback, run_load

logger = logging.getLogger(__name__)

MB = 1 << 20


def role(process: psutil.Process) -> str:
    """A process's part in a BentoML server: `supervisor`, `worker N`, or its command."""
    argv = process.cmdline()
    if "--worker-id" in argv:
        return f"worker {argv[argv.index('--worker-id') + 1]}"
    if "serve" in argv:
        return "supervisor"
    return " ".join(argv)[:60]


def cpu_seconds(root: psutil.Process) -> float:
    """User and system CPU seconds of `root`'s tree so far (its live processes)."""
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def snapshot(root: psutil.Process) -> dict[str, dict[str, float]]:
    """Each live process of `root`'s tree by role: RSS, USS and PSS in MB."""
    figures = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            memory = process.memory_full_info()
            figures[f"{role(process)} ({process.pid})"] = {
                "rss": memory.rss / MB, "uss": memory.uss / MB, "pss": memory.pss / MB}
        except psutil.Error:  # exited between the listing and the reading
            continue
    return figures


@dataclass
class Sampler:
    """Samples `root`'s tree every `interval` seconds in a thread of its own, tagged by phase."""

    root: psutil.Process
    interval: float = 1.0

    def __post_init__(self) -> None:
        self.samples: list[dict] = []
        self.phase = "idle"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._started = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append({"t": time.perf_counter() - self._started, "phase": self.phase,
                                 "processes": snapshot(self.root)})
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def summarise(samples: list[dict]) -> dict:
    """Per process: idle (last idle sample), peak and last under load; the tree's totals likewise,
    and the load's last-half growth of the total RSS."""
    idle = [s for s in samples if s["phase"] == "idle"]
    load = [s for s in samples if s["phase"] == "load"]
    names = sorted({name for s in samples for name in s["processes"]})

    def total(sample: dict, key: str) -> float:
        return sum(p[key] for p in sample["processes"].values())

    processes = {}
    for name in names:
        seen = [s["processes"][name] for s in load if name in s["processes"]]
        rest = idle[-1]["processes"].get(name) if idle else None
        processes[name] = {
            "idle_rss": rest and rest["rss"], "idle_uss": rest and rest["uss"],
            "peak_rss": max((p["rss"] for p in seen), default=None),
            "last_rss": seen[-1]["rss"] if seen else None, "last_uss": seen[-1]["uss"] if seen else None,
        }
    half = load[len(load) // 2:]
    return {
        "processes": processes,
        "idle_total_rss": total(idle[-1], "rss") if idle else None,
        "idle_total_pss": total(idle[-1], "pss") if idle else None,
        "peak_total_rss": max((total(s, "rss") for s in load), default=None),
        "last_total_rss": total(load[-1], "rss") if load else None,
        "last_total_pss": total(load[-1], "pss") if load else None,
        "second_half_growth_rss": total(half[-1], "rss") - total(half[0], "rss") if half else None,
    }


def served_workload(url: str, files: Sequence[Path]) -> Workload:
    """Closed-loop requests for the default model of the server at `url` (from its `GET /models`):
    /classify with the top 5 for a classifier, /embed for an embedder.

    Raises:
        GraftError: `GET /models` did not answer 200 (an API key needed), or the default model takes
            no images (a text model).
    """
    response = httpx.get(f"{url}/models", timeout=30)
    if response.status_code != 200:
        raise GraftError(f"expected GET {url}/models to answer 200, got {response.status_code}: {response.text[:200]}")
    listing = response.json()
    model = next(m for m in listing["models"] if m["name"] == listing["default"])
    if model["modality"] != "image":
        raise GraftError(f"expected the server's default model to be an image model, got the "
                         f"{model['modality']} model {model['name']!r}")
    if model["task"] == "classifier":
        return Workload(url=f"{url}/classify", files=files, form={"top_k": "5"})
    return Workload(url=f"{url}/embed", files=files)


def bench_memory(
    url: str, pid: int, out: Path, *, clients: int, seconds: float, idle_seconds: float = 5.0,
    interval: float = 1.0, size: str = "224",
) -> dict:
    """Sample server `pid`'s tree idle for `idle_seconds`, then under `clients` closed-loop clients
    on its default model's route (`served_workload`) for `seconds`; the figures, the load's
    throughput and every sample."""
    require_loopback(url)
    files = make_jpegs(out / "images", (size,))[size]
    workload = served_workload(url, files)
    server = psutil.Process(pid)
    cpu: list[float] = []
    with Sampler(server, interval) as sampler:
        time.sleep(idle_seconds)

        def loaded() -> None:
            sampler.phase = "load"
            cpu.append(cpu_seconds(server))

        result = run_load(workload, concurrency=clients, max_requests=int(seconds * 5000), max_seconds=seconds,
                          on_measure_start=loaded, label=f"memory c={clients}")
        cpu.append(cpu_seconds(server))
        sampler.phase = "after"
    figures = result.figures()
    images = len(result.latencies) * workload.images_per_request
    return {
        "kind": "memory", "url": url, "route": urlsplit(workload.url).path, "clients": clients, "seconds": seconds,
        "size": size,
        "images_per_s": figures["images_per_s"], "latency_ms": figures["latency_ms"], "errors": figures["errors"],
        # The server's CPU per answered image: a throughput figure that other work on a shared
        # machine disturbs less than images/s.
        "server_cpu_ms_per_image": 1000 * (cpu[1] - cpu[0]) / images if images else None,
        **summarise(sampler.samples), "samples": sampler.samples,
    }


def markdown(result: dict) -> str:
    """The per-process table and the totals."""
    def mb(value: float | None) -> str:
        return "–" if value is None else f"{value:.0f}"

    lines = [
        f"Memory of the server's process tree, idle then {result['clients']} clients on {result['route']} "
        f"({result['size']}-px JPEGs) for {result['seconds']:.0f} s: {result['images_per_s']:.1f} images/s, "
        f"p50 {result['latency_ms'].get('p50', float('nan')):.1f} ms, errors {result['errors'] or 0}; "
        f"server CPU {result['server_cpu_ms_per_image'] or float('nan'):.2f} ms per image.",
        "",
        "| process | idle RSS MB | idle USS MB | peak RSS MB under load | last RSS MB | last USS MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, p in result["processes"].items():
        lines.append(f"| {name} | {mb(p['idle_rss'])} | {mb(p['idle_uss'])} | {mb(p['peak_rss'])} | "
                     f"{mb(p['last_rss'])} | {mb(p['last_uss'])} |")
    lines += [
        f"| **total** | {mb(result['idle_total_rss'])} (PSS {mb(result['idle_total_pss'])}) | | "
        f"{mb(result['peak_total_rss'])} | {mb(result['last_total_rss'])} (PSS {mb(result['last_total_pss'])}) | |",
        "",
        f"Total RSS over the load's second half: {result['second_half_growth_rss']:+.0f} MB."
        if result["second_half_growth_rss"] is not None else "",
    ]
    return "\n".join(lines) + "\n"
