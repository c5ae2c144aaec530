"""`/v1/embeddings` and `/v1/models` in-process (real dispatcher, real ONNX Runtime, the tiny artifact):
OpenAI's shapes, `/embed`'s vectors, and every malformed body answered 4xx in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.responses import JSONResponse

from graft.service.errors import Unauthorized
from graft.service.middleware import RequestGuard
from graft.service.openai_api import EmbeddingsResponse, ModelList, OpenAIErrors, image_bytes
from tests.synthetic import EMBEDDER, EMBEDDING_DIM, NAME
from tests.unit.service.conftest import jpeg_bytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, media: str = "image/jpeg") -> str:
    return f"data:{media};base64,{b64(data)}"


def assert_openai_error(response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert fragment in body["error"]["message"], body
    return body["error"]


@pytest.fixture(scope="module")
def green_jpeg(pictures) -> bytes:
    return jpeg_bytes(pictures["green"])


@pytest.mark.parametrize("model", [NAME, EMBEDDER])
def test_floats_equal_embed_in_order(client, red_jpeg, green_jpeg, model):
    response = client.post("/v1/embeddings", json={"model": model, "input": [data_uri(red_jpeg), b64(green_jpeg)]})
    assert response.status_code == 200, response.text
    body = EmbeddingsResponse.model_validate(response.json()).model_dump()
    assert body["object"] == "list" and body["model"] == model
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    files = [("images", ("a.jpg", red_jpeg)), ("images", ("b.jpg", green_jpeg))]
    embedded = client.post("/embed", files=files, data={"model": model}).json()["embeddings"]
    np.testing.assert_allclose([item["embedding"] for item in body["data"]], embedded, atol=1e-6)


def test_base64_is_little_endian_float32_of_the_same_vectors(client, red_jpeg):
    request = {"model": "", "input": data_uri(red_jpeg)}
    floats = client.post("/v1/embeddings", json=request).json()
    packed = client.post("/v1/embeddings", json={**request, "encoding_format": "base64"}).json()
    (item,) = packed["data"]
    vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    assert vector.shape == (EMBEDDING_DIM,) and packed["model"] == NAME
    np.testing.assert_array_equal(vector, np.asarray(floats["data"][0]["embedding"], dtype=np.float32))
    assert len(item["embedding"]) == 4 * -(-EMBEDDING_DIM * 4 // 3)  # 4 bytes a float, 4 characters per 3 bytes


def test_user_is_ignored_and_the_models_own_dimensions_accepted(client, red_jpeg):
    response = client.post("/v1/embeddings", json={"model": EMBEDDER, "input": [b64(red_jpeg)],
                                                   "user": "someone", "dimensions": EMBEDDING_DIM})
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == EMBEDDING_DIM


def test_wrapped_base64_and_any_image_type_are_accepted(client, pictures):
    buffer = io.BytesIO()
    pictures["blue"].save(buffer, "PNG")
    wrapped = "\n".join(b64(buffer.getvalue())[i:i + 76] for i in range(0, len(b64(buffer.getvalue())), 76))
    response = client.post("/v1/embeddings", json={"model": "", "input": [wrapped, data_uri(buffer.getvalue(), "image/png")]})
    assert response.status_code == 200, response.text
    first, second = (item["embedding"] for item in response.json()["data"])
    np.testing.assert_allclose(first, second, atol=1e-6)


def test_models_lists_every_served_model(client):
    body = ModelList.model_validate(client.get("/v1/models").json()).model_dump()
    assert [card["id"] for card in body["data"]] == [NAME, EMBEDDER]
    assert all(card["object"] == "model" and card["created"] > 1.7e9 for card in body["data"])
    assert client.get(f"/v1/models/{EMBEDDER}").json()["id"] == EMBEDDER
    error = assert_openai_error(client.get("/v1/models/resnet50"), 404, "expected model to be one of")
    assert error["code"] == "not_found"


def png(size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "", "input": [b64(b"hello, not an image")]}, 400, "input[0]: expected an image file"),
    ({"model": "", "input": ["a photo of a cat"]}, 400, "input[0]: expected an image as a data:image"),
    ({"model": "", "input": [b64(png()), "data:text/plain;base64,aGVsbG8="]}, 400, "input[1]: expected a data:image"),
    ({"model": "", "input": [data_uri(png()), "data:image/png,%89PNG"]}, 400, "input[1]: expected a data:image/...;base64"),
    ({"model": "", "input": [b64(png()), b64(png()), b64(b"junk")]}, 400, "input[2]: expected an image file"),
    ({"model": "", "input": [b64(png()), b64(png()[:40])]}, 400, "input[1]"),
    ({"model": "", "input": [b64(png()), ""]}, 400, "input[1]: expected an image as a data:image/...;base64 URI or "
                                                    "bare base64 (graft embeds images, not text), got an empty string"),
    ({"model": "", "input": ["https://example.com/cat.jpg"]}, 400, "the server never fetches URLs"),
    ({"model": "", "input": []}, 400, "input: expected at least one image, got an empty list"),
    ({"model": "", "input": [b64(png())] * 7}, 400, "expected at most 6 images per request, got 7"),
    ({"model": "", "input": 5}, 400, "input: expected a string or a list of strings"),
    ({"model": "", "input": [b64(png()), 5]}, 400, "input[1]: expected an image"),
    ({"model": "", "input": [[101, 202]]}, 400, "input[0]: expected an image"),
    ({"model": 3, "input": [b64(png())]}, 400, "model: expected a model name string"),
    ({"input": [b64(png())]}, 400, "model: expected a model name string (GET /v1/models), got none"),
    ({"model": ""}, 400, "input: expected a string or a list of strings"),
    ({"model": "", "input": [b64(png())], "encoding_format": "float16"}, 400, "encoding_format: expected 'float' or 'base64'"),
    ({"model": "", "input": [b64(png())], "dimensions": 256}, 400, f"dimensions: expected {EMBEDDING_DIM}"),
    ({"model": "", "input": [b64(png())], "dimensions": str(EMBEDDING_DIM)}, 400, "dimensions: expected an integer"),
    ({"model": "", "input": [b64(png())], "extra": 1}, 400, "got a field named 'extra'"),
    ({"model": "resnet50", "input": [b64(png())]}, 404, "expected model to be one of"),
    ([{"model": "", "input": [b64(png())]}], 400, "expected a JSON object body, got a JSON array"),
], ids=lambda value: None)
def test_bad_bodies_get_a_4xx_in_openais_shape(client, red_jpeg, body, status, fragment):
    error = assert_openai_error(client.post("/v1/embeddings", json=body), status, fragment)
    assert error["type"] == "invalid_request_error"
    assert client.post("/v1/embeddings", json={"model": "", "input": b64(red_jpeg)}).status_code == 200


@pytest.mark.parametrize("content, status, fragment", [
    (b"{not json", 400, "expected a JSON object body, got invalid JSON"),
    (b"", 400, "expected a JSON object body, got invalid JSON"),
    (b'{"model": "", "input": "' + b"A" * (3 << 20) + b'"}', 413, "at most 2097152 bytes"),
])
def test_unparsable_or_oversized_bodies_get_a_4xx_in_openais_shape(client, content, status, fragment):
    response = client.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
    error = assert_openai_error(response, status, fragment)
    assert error["code"] == ("request_too_large" if status == 413 else None)


def test_unknown_v1_paths_and_methods_answer_in_openais_shape(client):
    assert_openai_error(client.post("/v1/chat/completions", json={}), 404, "expected one of")
    response = client.get("/v1/embeddings")
    assert_openai_error(response, 405, "expected POST on /v1/embeddings, got GET")
    assert response.headers["allow"] == "POST"
    assert set(client.get("/nope").json()) == {"error", "expected", "got"}  # graft's shape elsewhere


def test_the_v1_routes_are_documented(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/v1/models/{model}"} <= set(paths)
    assert "413" in paths["/v1/embeddings"]["post"]["responses"]


@pytest.mark.parametrize("item, fragment", [
    ("ftp://host/cat.jpg", "the server never fetches URLs, got the URL 'ftp://host/cat.jpg'"),
    ("data:,hello", "got a data: URI of type 'text/plain'"),
    ("DATA:Image/PNG;Base64," + b64(png()), None),
    ("data:image/png;base64" + b64(png()), "expected a data:image/...;base64 URI, got a data: URI that is not base64"),
    ("data:image/png;base64,%%%", "got text that is not base64"),
])
def test_image_bytes_reads_data_uris_and_refuses_the_rest(item, fragment):
    if fragment is None:
        assert image_bytes(0, item) == png()
        return
    with pytest.raises(ValueError, match="input\\[4\\]") as caught:
        image_bytes(4, item)
    assert fragment in str(caught.value)


def reshaped(app, path: str, **request) -> httpx.Response:
    async def run():
        transport = httpx.ASGITransport(app=OpenAIErrors(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, **request)

    return asyncio.run(run())


def test_the_guards_refusals_and_auth_errors_are_reshaped_with_their_headers():
    async def refusing(scope, receive, send):
        await Unauthorized(expected="an API key", got="none", headers={"WWW-Authenticate": "Bearer"}).response()(
            scope, receive, send)

    response = reshaped(refusing, "/v1/embeddings")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": {"message": "expected an API key, got none", "type": "invalid_request_error",
                                         "param": None, "code": "invalid_api_key"}}
    assert int(response.headers["content-length"]) == len(response.content)
    assert reshaped(refusing, "/v1x").json()["expected"] == "an API key"  # other paths keep graft's shape

    async def slow(scope, receive, send):
        await asyncio.sleep(0.3)
        await JSONResponse({"ok": True})(scope, receive, send)

    guard = RequestGuard(slow, guarded=lambda path: True, max_request_bytes=100, max_concurrency=1)

    async def burst():
        transport = httpx.ASGITransport(app=OpenAIErrors(guard))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", content=b"{}") for _ in range(2)))

    ok, refused = sorted(asyncio.run(burst()), key=lambda r: r.status_code)
    assert ok.json() == {"ok": True} and refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
