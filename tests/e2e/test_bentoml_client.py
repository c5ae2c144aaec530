"""BentoML's own clients against `graft serve`, used as a new user would.

`bentoml.SyncHTTPClient` and `AsyncHTTPClient` find `classify` and `embed` in `/schema.json`, send
real jpegs and options, and must get what `POST /classify` and `/embed` answer for the same jpegs.
Their refusals reach them as BentoML's exceptions with the status and graft's JSON body; a URL where
a file belongs is refused, not fetched. One sync client, sequential calls (it is not safe for
concurrent uploads).
"""

from __future__ import annotations

import asyncio
import base64
import json
from http import HTTPStatus

import bentoml
import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException

from tests.e2e.conftest import EMBEDDER, serve, started, upload

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def client(server):
    with bentoml.SyncHTTPClient(server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def jpegs(photo_jpegs):
    return list(photo_jpegs.values())


def posted(server, route: str, jpegs, **options: str) -> dict:
    """The plain HTTP route's answer (what curl -F gets)."""
    response = httpx.post(server.url + route, files=upload(*jpegs), data=options, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def without(answer: dict, key: str) -> dict:
    return {k: v for k, v in answer.items() if k != key}


def assert_same_classes(answer: dict, expected: dict) -> None:
    assert without(answer, "predictions") == without(expected, "predictions")
    for got, want in zip(answer["predictions"], expected["predictions"], strict=True):
        assert [p["label"] for p in got] == [p["label"] for p in want]
        np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-6)


def refusal(call) -> tuple[HTTPStatus, dict]:
    with pytest.raises(BentoMLException) as raised:
        call()
    return raised.value.error_code, json.loads(raised.value.message)


def test_the_client_finds_classify_and_embed(client):
    assert {"classify", "embed"} <= set(client.endpoints)


def test_classify_answers_as_the_form_route(server, client, jpegs):
    answer = client.classify(images=jpegs, top_k=3)
    assert_same_classes(answer, posted(server, "/classify", jpegs, top_k="3"))
    assert answer["top_k"] == 3 and len(answer["predictions"]) == len(jpegs)
    default = client.classify(images=jpegs[:1])
    assert default["top_k"] == 5 and default["top_k_capped"] is False
    assert client.classify(images=jpegs[:1], top_k=5000)["top_k_capped"] is True


def test_embed_answers_as_the_form_route(server, client, jpegs):
    answer = client.embed(images=jpegs, model=EMBEDDER, normalize=False)
    expected = posted(server, "/embed", jpegs, model=EMBEDDER, normalize="false")
    assert without(answer, "embeddings") == without(expected, "embeddings")
    np.testing.assert_allclose(answer["embeddings"], expected["embeddings"], atol=1e-6)
    assert answer["normalized"] is False and np.linalg.norm(answer["embeddings"][0]) > 1.5


def test_embed_as_base64_float16(client, jpegs):
    unit = np.asarray(client.embed(images=jpegs[:2])["embeddings"])
    packed = client.embed(images=jpegs[:2], encoding="base64", dtype="float16")
    assert packed["encoding"] == "base64" and packed["dtype"] == "float16"
    halves = np.stack([np.frombuffer(base64.b64decode(row), "<f2") for row in packed["embeddings"]])
    np.testing.assert_allclose(halves, unit, atol=1e-3)


def test_a_bad_image_is_a_400_naming_it(client, jpegs, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_bytes(b"these are not the pixels you are looking for")
    status, body = refusal(lambda: client.classify(images=[jpegs[0], notes]))
    assert status == HTTPStatus.BAD_REQUEST and set(body) == {"error", "expected", "got"}
    assert "images[1]" in body["error"]


def test_a_url_is_refused_not_fetched(client, server, jpegs):
    url = server.url + "/docs"
    status, body = refusal(lambda: client.embed(images=[jpegs[0], url]))
    assert status == HTTPStatus.BAD_REQUEST and "does not fetch URLs" in body["error"] and url in body["got"]
    status, body = refusal(lambda: client.embed(images=[url]))  # no file at all: the client sends no multipart form
    assert status == HTTPStatus.BAD_REQUEST and "file parts named 'images'" in body["error"]


def test_the_limits_still_apply(client, jpegs, tmp_path):
    status, body = refusal(lambda: client.classify(images=[jpegs[0]] * 9))  # GRAFT_MAX_IMAGES=8
    assert status == HTTPStatus.BAD_REQUEST and "at most 8 images" in body["error"]
    large = tmp_path / "large.jpg"
    large.write_bytes(b"\xff" * (5 << 20))  # over GRAFT_MAX_REQUEST_BYTES
    status, body = refusal(lambda: client.embed(images=[large]))
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE and "bytes" in body["error"]


def test_bad_options_are_4xx(client, jpegs):
    status, body = refusal(lambda: client.classify(images=jpegs[:1], model="no-such-model"))
    assert status == HTTPStatus.NOT_FOUND and "no-such-model" in body["got"]
    status, body = refusal(lambda: client.classify(images=jpegs[:1], model=EMBEDDER))
    assert status == HTTPStatus.BAD_REQUEST and "classifier" in body["error"]
    status, body = refusal(lambda: client.classify(images=jpegs[:1], top_k=0))
    assert status == HTTPStatus.BAD_REQUEST and body["error"].startswith("top_k: expected a positive integer")
    status, body = refusal(lambda: client.embed(images=jpegs[:1], encoding="npy"))  # the client reads JSON only
    assert status == HTTPStatus.BAD_REQUEST and "one of json, base64" in body["error"]
    answer = client.embed(images=jpegs[:1], model=f" {EMBEDDER} ", encoding="BASE64")  # parsed as the form parses
    assert answer["model"] == EMBEDDER and answer["encoding"] == "base64"


def test_the_async_client_answers_alike(server, client, jpegs):
    async def calls():
        async with bentoml.AsyncHTTPClient(server.url, timeout=120) as remote:
            return await remote.classify(images=jpegs, top_k=2), await remote.embed(images=jpegs)

    classified, embedded = asyncio.run(calls())
    assert_same_classes(classified, client.classify(images=jpegs, top_k=2))
    np.testing.assert_allclose(embedded["embeddings"], client.embed(images=jpegs)["embeddings"], atol=1e-6)


def test_api_keys_guard_the_client_routes(lite0_classifier, jpegs, tmp_path_factory):
    log = tmp_path_factory.mktemp("keyed") / "server.log"
    with started(serve([lite0_classifier], log, GRAFT_API_KEYS="e2e-key")) as keyed:
        with bentoml.SyncHTTPClient(keyed.url, token="e2e-key", timeout=120) as client:
            assert len(client.classify(images=jpegs[:1], top_k=1)["predictions"]) == 1
        with bentoml.SyncHTTPClient(keyed.url, timeout=120) as client:
            status, body = refusal(lambda: client.embed(images=jpegs[:1]))
    assert status == HTTPStatus.UNAUTHORIZED and "GRAFT_API_KEYS" in body["expected"]


def test_the_docs_and_schemas_still_serve(server):
    routes = {route["name"]: route["route"] for route in httpx.get(server.url + "/schema.json").json()["routes"]}
    assert routes == {"classify": "/api/classify", "embed": "/api/embed"}
    assert "/schema.json" in httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "GET /models" in httpx.get(server.url + "/docs").text
