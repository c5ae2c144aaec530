"""Containers for the tests: podman with the repository's containers.conf, the documented image
build (`make image`), containers of it on free loopback ports, and the head a replica fits."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image
from skimage import data

from tests.e2e.conftest import REPO, free_port, upload

CONTAINERS_CONF = os.environ.get("CONTAINERS_CONF") or str(REPO / "deploy" / "container" / "containers.conf")
READY_TIMEOUT_S = 120


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF},
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-2000:]}"
    return done


def build_image(model: Path, bentoml_home: Path) -> str:
    """`make image MODEL=model` with its own BentoML store; the image's name. Podman reuses the
    package-install layer while graft's wheel and the requirements are unchanged."""
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "CONTAINERS_CONF": CONTAINERS_CONF}
    done = subprocess.run(["make", "--no-print-directory", "image", f"MODEL={model}"],
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


TOKEN = "container-admin-token"
SPREAD_S = 5  # a head written through one replica is served by the others within this


def fit_head(container, name):
    """A 2-class head fitted through `POST /heads` on flipped and cropped variants of real photos."""
    photos = {"cat": "chelsea", "cup": "coffee"}
    files, labels = [], []
    for label, photo in photos.items():
        image = Image.fromarray(getattr(data, photo)())
        for variant in (image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), image.crop((20, 20, 260, 260))):
            files += upload(_jpeg(variant))
            labels.append(label)
    answer = httpx.post(container.url + "/heads", files=files, data={"name": name, "labels": labels},
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert answer.status_code == 201, answer.text


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def served_within(container, name, photo, *, present: bool) -> float:
    """Seconds until `container` serves head `name` (or stops serving it), each try a new connection."""
    started = time.monotonic()
    while True:
        answer = httpx.post(container.url + "/classify", files=upload(photo), data={"model": name}, timeout=30)
        if (answer.status_code == 200) == present:
            return time.monotonic() - started
        assert answer.status_code in (200, 404), answer.text
        assert time.monotonic() - started < SPREAD_S, f"{name} {'not served' if present else 'still served'}"
        time.sleep(0.1)
