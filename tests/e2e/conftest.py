"""Real servers for the e2e suites: `graft serve` as a subprocess on a free loopback port.

`server` (one per module) serves the Lite0 classifier (default) and its headless embedder;
`heads_server` also has an admin token and a heads directory, and can be restarted.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EMBEDDER = "tf_efficientnet_lite0-embedder"
LIMITS = {"GRAFT_MAX_IMAGES": "8", "GRAFT_MAX_PIXELS": "4000000", "GRAFT_MAX_REQUEST_BYTES": str(4 << 20)}
READY_TIMEOUT_S = 150


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def upload(*paths_or_bytes, field_name: str = "images"):
    parts = []
    for i, item in enumerate(paths_or_bytes):
        data = item.read_bytes() if isinstance(item, Path) else item
        parts.append((field_name, (f"{i}.jpg", data, "image/jpeg")))
    return parts


def decoded_images(url: str) -> float:
    """Images the server at `url` has decoded so far, from its `/metrics`."""
    text = httpx.get(url + "/metrics", timeout=10).text
    counts = re.findall(r'graft_stage_duration_seconds_count\{[^}]*stage="decode"[^}]*\} (\S+)', text)
    return sum(float(count) for count in counts)


@dataclass
class Server:
    """A running `graft serve`; `restart()` stops it and starts it again with the same settings."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    url: str = ""
    process: subprocess.Popen | None = None
    readiness: list[int] = field(default_factory=list)  # /readyz statuses seen while starting (0: refused)
    early_classify: httpx.Response | None = None  # a /classify sent while /readyz said 503
    token: str = ""
    heads_dir: Path | None = None

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.readiness = []
        with open(self.log, "ab") as sink:
            self.process = subprocess.Popen(
                [*self.argv, "--host", "127.0.0.1", "--port", str(port)],
                cwd=REPO, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        """Poll `/readyz` until 200, failing if the server exits or takes over READY_TIMEOUT_S."""
        started = time.monotonic()
        while True:
            assert self.process.poll() is None, f"server exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() - started < READY_TIMEOUT_S, f"not ready: {self.log.read_text()[-3000:]}"
            try:
                status = httpx.get(self.url + "/readyz", timeout=5).status_code
            except httpx.TransportError:
                status = 0
            self.readiness.append(status)
            if status == 200:
                return
            if status == 503 and self.early_classify is None:
                self.early_classify = httpx.post(self.url + "/classify", files=upload(png((64, 64))), timeout=30)
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the session we started: bentoml and its workers
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def serve(models: list[Path], log: Path, **env: str) -> Server:
    # Only these settings: not the caller's GRAFT_* (nor those the in-process suite sets).
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    # Each server its own BentoML home beside its log, not one per port in the system's temp directory.
    argv = [sys.executable, "-m", "graft.cli", "serve", "--state-dir", str(log.parent / f"{log.stem}-home")]
    for model in models:
        argv += ["--model", str(model)]
    return Server(argv, {**base, **LIMITS, **env}, log)


@contextlib.contextmanager
def started(server: Server) -> Iterator[Server]:
    """`server` started, and stopped afterwards (also when its start fails)."""
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(lite0_classifier, lite0_embedder, tmp_path_factory):
    with started(serve([lite0_classifier, lite0_embedder], tmp_path_factory.mktemp("server") / "server.log")) as running:
        yield running


@pytest.fixture(scope="module")
def heads_server(lite0_classifier, lite0_embedder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads-server")
    token = "e2e-admin-token"
    running = serve([lite0_classifier, lite0_embedder], folder / "server.log",
                    GRAFT_ADMIN_TOKEN=token, GRAFT_HEADS_DIR=str(folder / "heads"))
    running.token, running.heads_dir = token, folder / "heads"
    with started(running):
        yield running
