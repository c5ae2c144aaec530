"""The CPU container image, built once per session with the documented command (`make image`), and
containers of it run with podman on free loopback ports."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, free_port

CONTAINERS_CONF = os.environ.get("CONTAINERS_CONF") or str(REPO / "deploy" / "container" / "containers.conf")
READY_TIMEOUT_S = 120


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF},
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="session")
def cpu_image(lite0_classifier, tmp_path_factory) -> str:
    """`make image` on the test suite's Lite0 artifact (its own BentoML store); the image's name.
    Podman reuses the package-install layer while graft's wheel and the requirements are unchanged."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml")), "CONTAINERS_CONF": CONTAINERS_CONF}
    done = subprocess.run(["make", "--no-print-directory", "image", f"MODEL={lite0_classifier}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout.strip().splitlines()[-1]


@dataclass
class Container:
    """One `podman run -d` of an image, published on a free loopback port."""

    image: str
    name: str
    args: list[str] = field(default_factory=list)
    url: str = ""

    def start(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        podman("run", "-d", "--name", self.name, "-p", f"127.0.0.1:{port}:3000", *self.args, self.image)
        self.wait_ready()

    def wait_ready(self) -> float:
        """Seconds until `/readyz` answers 200; fails if the container stops or takes too long."""
        started = time.monotonic()
        while True:
            assert self.running(), f"container {self.name} exited: {self.logs()[-3000:]}"
            assert time.monotonic() - started < READY_TIMEOUT_S, f"not ready: {self.logs()[-3000:]}"
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{json .State}}", self.name, check=False).stdout
        return bool(state.strip()) and json.loads(state)["Running"]

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


def shared_dir(path: Path) -> Path:
    """A host directory the container's non-root user (uid 1034) can write: a heads volume."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path
