"""The exact-content cache (`GRAFT_CACHE_MB`) in a real `graft serve`: a repeated image skips
decoding and the model on every route that takes images, answers exactly what it answered the first
time, and never serves a replaced head's or another model's results."""

from __future__ import annotations

import base64
import io
import re

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import EMBEDDER, decoded_images, serve, started, upload

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLASSIFIER = "tf_efficientnet_lite0"
TOKEN = "e2e-admin-token"


@pytest.fixture(scope="module")
def cached_server(lite0_classifier, lite0_embedder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    with started(serve([lite0_classifier, lite0_embedder], folder / "server.log", GRAFT_CACHE_MB="16",
                       GRAFT_ADMIN_TOKEN=TOKEN, GRAFT_HEADS_DIR=str(folder / "heads"))) as running:
        yield running


@pytest.fixture(scope="module")
def jpegs(photo_jpegs) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in photo_jpegs.items()}


def lookups(server) -> dict[str, float]:
    """Cache hits and misses so far, summed over models."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    counts = {"hit": 0.0, "miss": 0.0}
    for result, value in re.findall(r'graft_cache_lookups_total\{[^}]*result="(\w+)"[^}]*\} (\S+)', text):
        counts[result] += float(value)
    return counts


def post(server, path: str, **request) -> httpx.Response:
    response = httpx.post(server.url + path, timeout=60, **request)
    assert response.status_code == 200, response.text
    return response


def test_a_repeat_is_a_hit_on_every_route_with_the_same_answer(cached_server, jpegs):
    photo = jpegs["coffee"]
    before, decoded = lookups(cached_server), decoded_images(cached_server.url)
    first = post(cached_server, "/classify", files=upload(photo), data={"top_k": "5"}).json()
    assert lookups(cached_server)["miss"] == before["miss"] + 1
    assert decoded_images(cached_server.url) == decoded + 1

    again = post(cached_server, "/classify", files=upload(photo), data={"top_k": "5"}).json()
    embedded = post(cached_server, "/embed", files=upload(photo)).json()["embeddings"]
    openai = post(cached_server, "/v1/embeddings", json={"model": CLASSIFIER, "input": base64.b64encode(photo).decode()})
    v2 = post(cached_server, f"/v2/models/{CLASSIFIER}/infer", json={
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(photo).decode()]}],
        "outputs": [{"name": "embedding"}]}).json()
    assert again == first
    assert openai.json()["data"][0]["embedding"] == embedded[0]
    raw = np.asarray(v2["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(raw / np.linalg.norm(raw), embedded[0], atol=1e-6)
    after = lookups(cached_server)
    assert after["hit"] == before["hit"] + 4 and after["miss"] == before["miss"] + 1
    assert decoded_images(cached_server.url) == decoded + 1  # decoded once, for the first request only


def test_another_model_and_new_bytes_miss(cached_server, jpegs):
    photo = jpegs["rocket"]
    post(cached_server, "/embed", files=upload(photo))
    before = lookups(cached_server)
    post(cached_server, "/embed", files=upload(photo), data={"model": EMBEDDER})
    post(cached_server, "/embed", files=upload(photo + b"\0"))  # the same picture, other bytes
    after = lookups(cached_server)
    assert after["miss"] == before["miss"] + 2 and after["hit"] == before["hit"]


def fit(server, name: str, samples: list[tuple[bytes, str]]) -> None:
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, (data, _) in enumerate(samples)]
    response = httpx.post(server.url + "/heads", files=files, timeout=120,
                          data={"name": name, "labels": [label for _, label in samples], "overwrite": "true"},
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 201, response.text


def crops(jpegs: dict[str, bytes]) -> list[bytes]:
    """Eight distinct images: each photo, and a crop of the first three."""
    from PIL import Image

    out = list(jpegs.values())
    for data in out[:3]:
        image = Image.open(io.BytesIO(data))
        buffer = io.BytesIO()
        image.crop((0, 0, image.width // 2, image.height // 2)).save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def test_a_replaced_head_is_never_served_from_the_cache(cached_server, jpegs):
    images = crops(jpegs)
    fit(cached_server, "colour", [(data, "warm" if i % 2 else "cold") for i, data in enumerate(images)])
    probe = {"files": upload(images[0]), "data": {"model": "colour", "top_k": "2"}}
    old = post(cached_server, "/classify", **probe).json()["predictions"][0]
    assert {p["label"] for p in old} == {"warm", "cold"}

    fit(cached_server, "colour", [(data, "left" if i < 4 else "right") for i, data in enumerate(images)])
    before = lookups(cached_server)
    new = post(cached_server, "/classify", **probe).json()["predictions"][0]
    assert {p["label"] for p in new} == {"left", "right"}  # the new head, on the cached embedding
    assert lookups(cached_server)["hit"] == before["hit"] + 1
    # The same pixels in other bytes (a trailing NUL after the JPEG's end) miss: decoded and run afresh.
    fresh = post(cached_server, "/classify", files=upload(images[0] + b"\0"), data=probe["data"]).json()
    assert lookups(cached_server)["miss"] == before["miss"] + 1
    assert fresh["predictions"][0] == new
