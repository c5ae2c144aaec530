"""Closed-loop HTTP load: N clients, each sending its next request as soon as its last one answered.

Why a small driver of our own rather than wrk or locust:
- The workload is multipart uploads of real JPEG files (or JSON texts) with per-request latency kept
  exactly. wrk needs a Lua script to build multipart bodies and reports only its own aggregated
  histogram; it is also a C tool outside the Python environment CI installs.
- locust (gevent users, web UI, CSV output) would run as a separate process competing for the same
  two cores as the server, and its percentiles come from rounded buckets.
- On a 2-core machine the driver's CPU is taken from the server, so it is as lean as Python allows:
  one uvloop thread, one keep-alive connection per client, each request's bytes (request line,
  headers, body) encoded once before timing and written as they are, and of each answer only the
  status and Retry-After read (httptools, the C parser uvicorn uses; the body is not kept). That costs
  0.12-0.14 CPU-ms per request against 0.30 for aiohttp's client and about 1 for httpx's (measured
  against the same server at 16 clients, 224-px /embed).

Load is refused for anything but a loopback address: this is a benchmark of our own server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import urlsplit

import httptools
import httpx
import uvloop
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


@dataclass(frozen=True)
class JsonWorkload:
    """Requests whose bodies are JSON documents, cycled (texts for a text model's `/embed`)."""

    url: str
    documents: Sequence[dict]
    images_per_request: int = 1
    """Inputs per request (texts here): named like `Workload`'s, whose figures' keys it feeds."""

    def bodies(self) -> list[tuple[bytes, dict[str, str]]]:
        """Each document encoded once, before timing (see `Workload.bodies`)."""
        return [(json.dumps(document).encode(), {"content-type": "application/json"}) for document in self.documents]


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends pre-encoded requests and reads only the status
    line and the Retry-After header of each answer (httptools parses; the body is discarded)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future | None = None
        self.retry_after = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after" and value.isdigit():
            self.retry_after = float(value)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive() and self.transport is not None:
            # The server closes this connection ("Connection: close"): the next request opens a new one.
            self.transport.close()
            self.transport = None
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(self.parser.get_status_code())

    def _fail(self, error: BaseException) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    async def send(self, request: bytes) -> tuple[int, float]:
        """The answer's status code and Retry-After seconds (0 when absent)."""
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.retry_after = 0.0
        self.transport.write(request)
        return await self.answer, self.retry_after


def _encode(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 POST (request line, headers, body) as bytes, built once before timing."""
    parts = urlsplit(url)
    lines = [f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
             f"Host: {parts.netloc}", f"Content-Length: {len(body)}",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _drive(
    workload: Workload | JsonWorkload,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    on_measure_start: Callable[[], None] | None,
    timeout_s: float,
    label: str,
    honor_retry_after: bool,
) -> LoadResult:
    requests = [_encode(workload.url, body, headers) for body, headers in workload.bodies()]
    parts = urlsplit(workload.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    result = LoadResult(concurrency, workload.images_per_request)
    issued = 0

    async def connect() -> _Connection:
        _, connection = await loop.create_connection(_Connection, host, port)
        return connection

    async def send(connection: _Connection, index: int) -> tuple[float, str | None, float, _Connection]:
        """Latency, error (None for a 200), the seconds the server asked to wait (Retry-After) and the
        connection to use next (a new one when this one failed: a real client reconnects)."""
        begin = time.perf_counter()
        retry_after = 0.0
        try:
            if connection.transport is None:
                connection = await connect()
            async with asyncio.timeout(timeout_s):
                status, retry_after = await connection.send(requests[index % len(requests)])
            error = None if status == 200 else str(status)
        except (OSError, httptools.HttpParserError, TimeoutError) as exc:
            error = type(exc).__name__
            if connection.transport is not None:
                connection.transport.close()
        return time.perf_counter() - begin, error, retry_after, connection

    # Every client's keep-alive connection is opened before timing. Opened inside the timed loop,
    # 200 connections at once added about 80 ms to the first wave of answers here (the driver's
    # connects and the server's accepts share the two cores): a connection storm, not the steady
    # load of keep-alive clients a cell measures.
    connections = list(await asyncio.gather(*(connect() for _ in range(concurrency))))
    # One unrecorded request first: the server's first request after an idle spell is not what a
    # steady load sees.
    _, error, _, connections[0] = await send(connections[0], 0)
    if error:
        logger.warning("%s: warm-up request failed: %s", label, error)
    if on_measure_start is not None:
        on_measure_start()  # nothing is in flight here, so a blocking call is harmless

    start = last_answer = time.perf_counter()
    deadline = start + max_seconds
    with tqdm(total=max_requests, desc=label, unit="req", leave=False) as progress:

        async def client_loop(slot: int) -> None:
            nonlocal issued, last_answer
            while issued < max_requests and time.perf_counter() < deadline:
                index = issued
                issued += 1
                # A reconnected client keeps its new connection, so the close below reaches it.
                latency, error, retry_after, connections[slot] = await send(connections[slot], index)
                last_answer = time.perf_counter()
                if error is None:
                    result.latencies.append(latency)
                else:
                    result.errors[error] += 1
                    result.error_latencies.setdefault(error, []).append(latency)
                progress.update()
                if retry_after and honor_retry_after:
                    await asyncio.sleep(retry_after)  # a well-behaved client waits as it was told

        # No request starts after the deadline; those in flight get as long again to finish (so the
        # server is idle when the next cell starts), then are cancelled as unfinished.
        tasks = [asyncio.create_task(client_loop(slot)) for slot in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline + max_seconds - time.perf_counter()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        result.unfinished = len(pending)
        result.duration_s = last_answer - start
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return result


def run_load(
    workload: Workload | JsonWorkload,
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
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(
            _drive(workload, concurrency, max_requests, max_seconds, on_measure_start, timeout_s, label, honor_retry_after)
        )
