"""Closed-loop HTTP load: N clients, each sending its next request as soon as its last one answered.

Why a small asyncio + aiohttp driver rather than wrk or locust:
- The workload is multipart uploads of real JPEG files with per-request latency kept exactly. wrk
  needs a Lua script to build multipart bodies and reports only its own aggregated histogram; it is
  also a C tool outside the Python environment CI installs.
- locust (gevent users, web UI, CSV output) would run as a separate process competing for the same
  two cores as the server, and its percentiles come from rounded buckets.
- One asyncio thread with keep-alive connections costs the server little CPU, and the harness gets
  every latency, every status code and exact bounds (a request count and a time limit) in-process.
  aiohttp (already installed with BentoML) sends pre-encoded bodies for about a third of httpx's CPU
  per request (1 vs 3 ms here); on a 2-core machine the driver's CPU is taken from the server.

Load is refused for anything but a loopback address: this is a benchmark of our own server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urljoin, urlsplit

import aiohttp
import httpx
from tqdm import tqdm

from graft.artifact.errors import GraftError
from graft.benchmarks.stats import latency_summary

logger = logging.getLogger(__name__)


class NotLoopback(GraftError, ValueError):
    """A load target that is not this machine."""


def require_loopback(url: str) -> None:
    """Raise `NotLoopback` unless `url`'s host resolves to a loopback address."""
    host = urlsplit(url).hostname
    if not host:
        raise NotLoopback(f"expected an http://HOST:PORT URL, got {url!r}")
    try:
        address = ipaddress.ip_address(socket.gethostbyname(host))
    except OSError as error:
        raise NotLoopback(f"expected a loopback host, got {host!r} which does not resolve ({error})") from None
    if not address.is_loopback:
        raise NotLoopback(f"expected a loopback address (127.0.0.1, localhost), got {host} ({address})")


@dataclass
class LoadResult:
    """What one closed-loop run measured; latencies are seconds of successful requests only."""

    concurrency: int
    images_per_request: int
    duration_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    error_latencies: dict[str, list[float]] = field(default_factory=dict)
    """Seconds to each error answer, by status (how fast the server refuses, e.g. 429s under overload)."""
    unfinished: int = 0
    """Requests still in flight at the deadline (cancelled; not in `requests`)."""

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def figures(self) -> dict:
        ok = len(self.latencies)
        return {
            "concurrency": self.concurrency,
            "images_per_request": self.images_per_request,
            "requests": self.requests,
            "errors": dict(self.errors),
            "unfinished": self.unfinished,
            "duration_s": self.duration_s,
            "requests_per_s": ok / self.duration_s if self.duration_s else 0.0,
            "images_per_s": ok * self.images_per_request / self.duration_s if self.duration_s else 0.0,
            "latency_ms": latency_summary(self.latencies),
            "error_latency_ms": {error: latency_summary(seconds) for error, seconds in self.error_latencies.items()},
        }


@dataclass(frozen=True)
class Workload:
    """What each request carries: `images_per_request` files (cycled through `files`) and form fields."""

    url: str
    files: Sequence[Path]
    images_per_request: int = 1
    form: dict[str, str] = field(default_factory=dict)
    field_name: str = "images"

    def bodies(self) -> list[tuple[bytes, dict[str, str]]]:
        """One encoded multipart body (with its content-type header) per distinct request.

        Encoded once, before timing: re-encoding the same files for every request would bill the
        driver's CPU (which shares the machine with the server) to the service, and disk I/O too.
        """
        blobs = [(path.name, path.read_bytes()) for path in self.files]
        count = len(blobs)
        bodies = []
        for start in range(0, count * self.images_per_request, self.images_per_request):
            files = [(self.field_name, (*blobs[(start + k) % count], "image/jpeg"))
                     for k in range(self.images_per_request)]
            request = httpx.Request("POST", self.url, files=files, data=self.form)
            bodies.append((request.read(), {"content-type": request.headers["content-type"]}))
        return bodies


async def _drive(
    workload: Workload,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    on_measure_start: Callable[[], None] | None,
    timeout_s: float,
    label: str,
    honor_retry_after: bool,
) -> LoadResult:
    bodies = workload.bodies()
    result = LoadResult(concurrency, workload.images_per_request)
    issued = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as client:

        async def send(index: int) -> tuple[float, str | None, float]:
            """Latency, error (None for a 200) and the seconds the server asked to wait (Retry-After)."""
            begin = time.perf_counter()
            retry_after = 0.0
            try:
                content, headers = bodies[index % len(bodies)]
                async with client.post(workload.url, data=content, headers=headers) as response:
                    await response.read()
                    error = None if response.status == 200 else str(response.status)
                    if error and response.headers.get("Retry-After", "").isdigit():
                        retry_after = float(response.headers["Retry-After"])
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                error = type(exc).__name__
            return time.perf_counter() - begin, error, retry_after

        # One unrecorded request first: the server's first request after an idle spell is not what
        # a steady load sees.
        _, error, _ = await send(0)
        if error:
            logger.warning("%s: warm-up request failed: %s", label, error)
        # Every client's keep-alive connection is opened before timing, with a `GET /readyz`. Opened
        # inside the timed loop, 200 connections at once added about 80 ms to the first wave of
        # answers here (the driver's connects and the server's accepts share the two cores): a
        # connection storm, not the steady load of keep-alive clients a cell measures.
        ready_url = urljoin(workload.url, "/readyz")

        async def connect() -> None:
            async with client.get(ready_url) as response:
                await response.read()

        await asyncio.gather(*(connect() for _ in range(concurrency - 1)))
        if on_measure_start is not None:
            on_measure_start()  # nothing is in flight here, so a blocking call is harmless

        start = last_answer = time.perf_counter()
        deadline = start + max_seconds
        with tqdm(total=max_requests, desc=label, unit="req", leave=False) as progress:

            async def client_loop() -> None:
                nonlocal issued, last_answer
                while issued < max_requests and time.perf_counter() < deadline:
                    index = issued
                    issued += 1
                    latency, error, retry_after = await send(index)
                    last_answer = time.perf_counter()
                    if error is None:
                        result.latencies.append(latency)
                    else:
                        result.errors[error] += 1
                        result.error_latencies.setdefault(error, []).append(latency)
                    progress.update()
                    if retry_after and honor_retry_after:
                        await asyncio.sleep(retry_after)  # a well-behaved client waits as it was told

            # No request starts after the deadline; those in flight get as long again to finish
            # (so the server is idle when the next cell starts), then are cancelled as unfinished.
            tasks = [asyncio.create_task(client_loop()) for _ in range(concurrency)]
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline + max_seconds - time.perf_counter()))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            result.unfinished = len(pending)
            result.duration_s = last_answer - start
    return result


def run_load(
    workload: Workload,
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    on_measure_start: Callable[[], None] | None = None,
    timeout_s: float = 60.0,
    label: str = "load",
    honor_retry_after: bool = False,
) -> LoadResult:
    """Drive `workload` with `concurrency` closed-loop clients until `max_requests` are sent or
    `max_seconds` have passed. Requests in flight at the deadline may finish within another
    `max_seconds` and count; any still running then are cancelled and counted as `unfinished`.
    Throughput is answered requests over the time to the last answer.

    Args:
        on_measure_start: called after the warm-up, before the first timed request (e.g. to take a
            `/metrics` snapshot).
        honor_retry_after: a refused client waits as long as the response's `Retry-After` says before
            its next request (a closed loop otherwise retries at once).
    """
    require_loopback(workload.url)
    if concurrency < 1 or max_requests < 1 or max_seconds <= 0:
        raise ValueError(
            f"expected concurrency, max_requests >= 1 and max_seconds > 0, got "
            f"{concurrency}, {max_requests}, {max_seconds}"
        )
    return asyncio.run(
        _drive(workload, concurrency, max_requests, max_seconds, on_measure_start, timeout_s, label, honor_retry_after)
    )
