"""The API service in-process (real dispatcher, real ONNX Runtime, the tiny synthetic artifact): shapes
and errors. That Lite0 calls a cat a cat is checked on a real server in tests/e2e/test_serve.py."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import EMBEDDER, EMBEDDING_DIM, LABELS, NAME
from tests.unit.service.conftest import jpeg_bytes


def files(*blobs: bytes, field: str = "images"):
    return [(field, (f"{i}.jpg", blob, "image/jpeg")) for i, blob in enumerate(blobs)]


def assert_error(response, status: int, fragment: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "expected", "got"}, body
    assert fragment in body["error"], body
    return body


def test_classify_ranks_the_labels(client, red_jpeg):
    response = client.post("/classify", files=files(red_jpeg), data={"top_k": "3"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == NAME and body["top_k"] == 3 and not body["top_k_capped"]
    (predictions,) = body["predictions"]
    assert len(predictions) == 3 and predictions[0]["label"] == "red"
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1


def test_one_result_per_image_in_order(client, pictures):
    names = ["green", "red", "blue", "red"]
    response = client.post("/classify", files=files(*(jpeg_bytes(pictures[n]) for n in names)), data={"top_k": "1"})
    top1 = [p[0]["label"] for p in response.json()["predictions"]]
    singles = [
        client.post("/classify", files=files(jpeg_bytes(pictures[n])), data={"top_k": "1"}).json()["predictions"][0][0]["label"]
        for n in names
    ]
    assert top1 == singles == names


def test_top_k_is_capped_at_the_label_count(client, red_jpeg):
    body = client.post("/classify", files=files(red_jpeg), data={"top_k": "5000"}).json()
    assert body["top_k"] == len(LABELS) and body["top_k_capped"] is True
    assert sorted(p["label"] for p in body["predictions"][0]) == sorted(LABELS)
    assert sum(p["score"] for p in body["predictions"][0]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("model", ["", EMBEDDER])
def test_embed_is_unit_norm_of_the_manifest_dim(client, red_jpeg, model):
    body = client.post("/embed", files=files(red_jpeg, red_jpeg), data={"model": model}).json()
    assert body["dim"] == EMBEDDING_DIM and body["normalized"] is True
    vectors = np.asarray(body["embeddings"])
    assert vectors.shape == (2, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embed_without_normalisation_keeps_the_raw_vector(client, red_jpeg):
    raw = client.post("/embed", files=files(red_jpeg), data={"normalize": "false"}).json()
    unit = client.post("/embed", files=files(red_jpeg)).json()
    raw_vector = np.asarray(raw["embeddings"][0])
    assert raw["normalized"] is False and np.linalg.norm(raw_vector) > 1.5
    np.testing.assert_allclose(raw_vector / np.linalg.norm(raw_vector), unit["embeddings"][0], atol=1e-5)


def test_models_lists_both_with_their_provider(client):
    body = client.get("/models").json()
    assert body["default"] == NAME
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name[NAME]["num_labels"] == len(LABELS)
    assert by_name[EMBEDDER]["task"] == "embedder" and by_name[EMBEDDER]["embedding_dim"] == EMBEDDING_DIM
    assert all(m["provider"] == "CPUExecutionProvider" for m in body["models"])


def test_openapi_documents_every_route_with_fields_and_errors(client):
    spec = client.get("/openapi.json").json()
    assert {"/classify", "/embed", "/models", "/livez", "/readyz", "/metrics"} <= set(spec["paths"])
    assert spec["info"]["version"] not in ("", "None")
    classify = spec["paths"]["/classify"]["post"]
    fields = classify["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"images", "top_k", "model", "timeout_ms"} <= set(fields)
    assert {"200", "400", "404", "413", "429", "503"} <= set(classify["responses"])
    assert "ModelsResponse" in spec["components"]["schemas"]
    page = client.get("/docs")
    assert "text/html" in page.headers["content-type"]
    assert "<script" not in page.text and "GET /models" in page.text and "top_k" in page.text


def test_responses_match_their_documented_schemas(client, red_jpeg):
    """Every route the in-process service can answer without state: the documented success status,
    and a body its documented schema accepts."""
    from graft.service.routes import ENDPOINTS

    spec = client.get("/openapi.json").json()
    calls = {("POST", "/classify"): {"files": files(red_jpeg)}, ("POST", "/embed"): {"files": files(red_jpeg)}}
    checked = 0
    for endpoint in ENDPOINTS:
        if endpoint.method == "GET" and "{" not in endpoint.path or (endpoint.method, endpoint.path) in calls:
            answer = client.request(endpoint.method, endpoint.path, **calls.get((endpoint.method, endpoint.path), {}))
            documented = spec["paths"][endpoint.path][endpoint.method.lower()]["responses"]
            assert answer.status_code == endpoint.status and str(answer.status_code) in documented, endpoint.path
            if endpoint.response is not None:
                endpoint.response.model_validate(answer.json())
            checked += 1
    assert checked >= 8


def test_docs_name_the_server_they_are_served_from(client):
    spec = client.get("/openapi.json").json()
    assert spec["servers"] == [{"url": "http://testserver"}]
    page = client.get("/docs").text
    assert "http://testserver/classify" in page and "localhost:3000" not in page
    assert "(default )" not in page
    assert spec["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]


@pytest.mark.parametrize("field", ["topk", "top-k", "Model"])
def test_misspelled_options_are_refused_naming_the_valid_fields(client, red_jpeg, field):
    body = assert_error(client.post("/classify", files=files(red_jpeg), data={field: "1"}), 400, field)
    assert "top_k" in body["expected"] and body["got"] == f"a field named {field!r}"


def test_a_trailing_slash_is_the_same_route(client, red_jpeg):
    assert client.post("/classify/", files=files(red_jpeg)).status_code == 200


def png_bytes(size, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("request_kwargs, status, fragment", [
    ({"files": files(b"")}, 400, "got an empty file"),
    ({"files": files(b"hello, not an image")}, 400, "cannot identify"),
    ({"files": files(b"\xff\xd8\xff\xe0" + b"\x00" * 64)}, 400, "images[0]"),
    ({"files": files(png_bytes((1001, 1001)))}, 400, "expected at most 1000000 pixels"),
    ({"files": files(png_bytes((1, 20000)))}, 400, "expected an aspect ratio that resizes within"),
    ({"files": files(*[png_bytes((8, 8))] * 7)}, 400, "at most 6 images"),
    ({"files": files(png_bytes((8, 8)), field="image")}, 400, "got a field named 'image'"),
    ({"files": files(png_bytes((8, 8))), "data": {"images": ""}}, 400, "got an empty value"),
    ({"data": {"top_k": "3"}}, 400, "file parts named 'images'"),
    ({"files": files(png_bytes((8, 8))), "data": {"top_k": "0"}}, 400, "top_k: expected a positive integer, got '0'"),
    ({"files": files(png_bytes((8, 8))), "data": {"top_k": "-2"}}, 400, "top_k: expected a positive integer"),
    ({"files": files(png_bytes((8, 8))), "data": {"top_k": "2.5"}}, 400, "top_k: expected a positive integer, got '2.5'"),
    ({"files": files(png_bytes((8, 8))), "data": {"top_k": "three"}}, 400, "top_k: expected a positive integer"),
    ({"files": files(png_bytes((8, 8))), "data": {"top_k": "9" * 5000}}, 400, "top_k"),  # int() digit limit
    ({"files": files(png_bytes((8, 8))), "data": {"top_k": "[" * 5000}}, 400, "top_k"),  # JSON recursion limit
    ({"files": files(png_bytes((8, 8))), "data": {"model": "nope"}}, 404, "expected model to be one of"),
    ({"files": files(png_bytes((8, 8))), "data": {"model": EMBEDDER}}, 400, "expected a classifier model"),
    ({"data": {"images": "http://169.254.169.254/latest/meta-data"}}, 400, "multipart/form-data"),
    ({"files": files(png_bytes((8, 8))), "data": {"images": "http://169.254.169.254/"}}, 400, "does not fetch URLs"),
    ({"json": {"images": ["http://example.com/cat.jpg"]}}, 400, "images"),
    ({"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, "'images'"),
    ({"content": b"garbage", "headers": {"content-type": "multipart/form-data"}}, 400, "multipart/form-data"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "multipart/form-data"),
    ({"content": b"x" * (3 << 20), "headers": {"content-type": "multipart/form-data; boundary=x"}}, 413, "at most 2097152 bytes"),
], ids=lambda value: None)
def test_bad_requests_get_a_4xx_json_error(client, red_jpeg, request_kwargs, status, fragment):
    assert_error(client.post("/classify", **request_kwargs), status, fragment)
    assert client.post("/classify", files=files(red_jpeg)).status_code == 200


@pytest.mark.parametrize("method, path", [("GET", "/classify"), ("PUT", "/embed"), ("DELETE", "/classify")])
def test_other_methods_get_a_json_405(client, method, path):
    response = client.request(method, path)
    body = assert_error(response, 405, f"expected POST on {path}, got {method}")
    assert response.headers["allow"] == "POST" and body["got"] == method


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_paths_get_a_json_404_naming_the_routes(client, method):
    body = assert_error(client.request(method, "/clasify"), 404, "expected one of POST /classify, POST /embed")
    assert "GET /models" in body["expected"]
    assert body["got"] == f"{method} /clasify"
    assert client.get("/livez").status_code == 200  # known routes untouched


def test_models_is_get_only_with_a_json_405(client):
    assert client.get("/models").status_code == 200
    response = client.post("/models")
    assert_error(response, 405, "expected GET on /models, got POST")
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("L", "JPEG"), ("I;16", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("RGB", "WEBP")])
def test_any_image_mode_is_served(client, pictures, mode, fmt):
    buffer = io.BytesIO()
    pictures["red"].convert(mode).save(buffer, fmt)
    body = client.post("/classify", files=files(buffer.getvalue()), data={"top_k": "1"}).json()
    assert len(body["predictions"]) == 1 and 0 < body["predictions"][0][0]["score"] <= 1


def test_a_truncated_jpeg_says_so(client, red_jpeg):
    body = assert_error(client.post("/classify", files=files(red_jpeg[: len(red_jpeg) // 2])), 400, "truncated")
    assert body["expected"] == "a complete, valid image"


def test_one_bad_image_names_its_position(client, red_jpeg):
    assert_error(client.post("/embed", files=files(red_jpeg, b"junk")), 400, "images[1]")




def test_the_latency_budget_counts_decoding(client, red_jpeg, service_app, monkeypatch):
    """`timeout_ms` counts from the request's arrival: an image whose decoding outlasts it is
    answered 503 without running (the budget used to start after decoding)."""
    import time

    decode = service_app.prepare

    def slow_decode(*args, **kwargs):
        time.sleep(0.3)  # decoding that takes longer than the request's whole budget
        return decode(*args, **kwargs)

    monkeypatch.setattr(service_app, "prepare", slow_decode)
    late = client.post("/classify", files=files(red_jpeg), data={"timeout_ms": "200"})
    assert_error(late, 503, "latency budget")
    assert client.post("/classify", files=files(red_jpeg), data={"timeout_ms": "5000"}).status_code == 200
