"""In-process fixtures: the real BentoML services behind `TestClient(Graft.to_asgi())`, serving the tiny
synthetic artifact (`tests.synthetic`): no torch, no downloads. What needs real ImageNet weights is
tested against a real server in `tests/e2e`."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from PIL import Image

from tests import synthetic

# Small limits so the limit tests stay small; read by service.config when service.app is imported.
LIMITS = {
    "GRAFT_MAX_BATCH_SIZE": "8",
    "GRAFT_MAX_IMAGES": "6",
    "GRAFT_MAX_PIXELS": "1000000",
    "GRAFT_MAX_REQUEST_BYTES": str(2 << 20),
}


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


async def until(condition, timeout: float = 10.0) -> None:
    """Poll `condition()` while the event loop runs, instead of sleeping for a guess at how long it takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> Path:
    """The tiny synthetic classifier artifact (logits + embedding)."""
    out = tmp_path_factory.mktemp("artifacts") / synthetic.NAME
    synthetic.write_artifact(out)
    return out


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory) -> Path:
    """The tiny classifier's embedder (embedding only)."""
    out = tmp_path_factory.mktemp("artifacts") / synthetic.EMBEDDER
    synthetic.write_artifact(out, headless=True)
    return out


@pytest.fixture(scope="session")
def pictures() -> dict[str, Image.Image]:
    """One synthetic picture per label of the tiny classifier, named by that label."""
    return synthetic.pictures()


@pytest.fixture(scope="session")
def red_jpeg(pictures) -> bytes:
    return jpeg_bytes(pictures["red"])


@pytest.fixture(scope="session")
def service_app(tiny_classifier, tiny_embedder, tmp_path_factory):
    """`service.app` imported with the classifier (default) and the embedder configured."""
    patch = pytest.MonkeyPatch()
    patch.setenv("GRAFT_MODELS", f"{tiny_classifier},{tiny_embedder}")
    patch.setenv("GRAFT_DEFAULT_MODEL", "")
    # BentoML's /metrics reads prometheus_client's multi-process files; `bentoml serve` sets this.
    patch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path_factory.mktemp("prometheus")))
    for name, value in LIMITS.items():
        patch.setenv(name, value)
    import graft.service.app

    yield graft.service.app
    patch.undo()


@pytest.fixture(scope="session")
def client(service_app):
    """A TestClient on the API service, returned once /readyz says the models are warmed."""
    from starlette.testclient import TestClient

    with TestClient(service_app.Graft.to_asgi()) as test_client:
        deadline = time.monotonic() + 120
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.2)
        yield test_client
