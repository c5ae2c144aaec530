"""The `/v2` Open Inference Protocol routes with the real `tritonclient.http` against `graft serve`.

The `server` fixture (tests/e2e/conftest.py) serves the Lite0 ImageNet classifier as
`tf_efficientnet_lite0` (the default) and its headless embedder. Every v2 answer is checked against
what `/classify` and `/embed` answer for the same photos; malformed v2 requests, sent raw with httpx,
must get a 4xx JSON error, never a 5xx.
"""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from graft.artifact.image import decode_image
from graft.artifact.manifest import read_manifest
from graft.artifact.preprocessing import preprocess

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CLASSIFIER = "tf_efficientnet_lite0"
EMBEDDER = "tf_efficientnet_lite0-embedder"
TOP = 3


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def jpegs(photo_jpegs) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in photo_jpegs.items()}


@pytest.fixture(scope="module")
def manifest(lite0_classifier):
    return read_manifest(lite0_classifier)


@pytest.fixture(scope="module")
def classified(server, jpegs) -> list[list[dict]]:
    """`/classify`'s top predictions for the photos, in order."""
    files = [("images", (f"{name}.jpg", data, "image/jpeg")) for name, data in jpegs.items()]
    response = httpx.post(server.url + "/classify", files=files, data={"top_k": str(TOP)}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def embedded(server, jpegs, model: str) -> np.ndarray:
    """`/embed`'s (L2-normalised) embeddings for the photos, in order."""
    files = [("images", (f"{name}.jpg", data, "image/jpeg")) for name, data in jpegs.items()]
    response = httpx.post(server.url + "/embed", files=files, data={"model": model}, timeout=120)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["embeddings"], dtype=np.float32)


def images_input(jpegs: dict[str, bytes], *, binary: bool) -> triton.InferInput:
    """Encoded images as BYTES: raw in the binary extension, base64 text in JSON."""
    elements = [data if binary else base64.b64encode(data) for data in jpegs.values()]
    tensor = triton.InferInput("images", [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def text(element: bytes | str) -> str:
    return element.decode() if isinstance(element, bytes) else element


def normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def assert_matches_classify(classes: np.ndarray, classified: list[list[dict]]) -> None:
    """Triton's "score:index:label" strings agree with /classify's predictions, image by image."""
    assert classes.shape == (len(classified), TOP)
    for row, predictions in zip(classes, classified):
        for element, prediction in zip(row, predictions):
            score, index, label = text(element).split(":", 2)
            assert (int(index), label) == (prediction["index"], prediction["label"])
            assert float(score) == pytest.approx(prediction["score"], abs=1e-5)


def test_server_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "graft"
    assert {"binary_tensor_data", "classification", "statistics"} <= set(metadata["extensions"])


@pytest.mark.parametrize("model, outputs", [
    (CLASSIFIER, {"logits", "probabilities", "embedding"}), (EMBEDDER, {"embedding"}),
])
def test_model_metadata_config_and_readiness(server, client, manifest, model, outputs):
    height, width = manifest.preprocessing.input_size
    metadata = client.get_model_metadata(model)
    assert metadata["name"] == model
    inputs = {i["datatype"]: i for i in metadata["inputs"]}
    assert inputs["BYTES"]["name"] == "images" and inputs["FP32"]["shape"] == [-1, 3, height, width]
    assert {o["name"] for o in metadata["outputs"]} == outputs
    assert all(o["datatype"] == "FP32" for o in metadata["outputs"])
    (version,) = metadata["versions"]
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, model_version=version)
    assert client.get_model_metadata(model, model_version=version)["name"] == model
    config = client.get_model_config(model)
    assert config["name"] == model and config["max_batch_size"] >= 1
    assert {o["name"] for o in config["output"]} == outputs
    assert {i["data_type"] for i in config["input"]} == {"TYPE_STRING", "TYPE_FP32"}
    assert all(i["optional"] for i in config["input"]) and "exactly one" in metadata["parameters"]["inputs"]
    ready = httpx.get(f"{server.url}/v2/models/{model}/versions/{version}/ready", timeout=10)
    assert ready.json() == {"name": model, "ready": True}


def test_statistics_count_what_ran(client, jpegs):
    """`get_inference_statistics()` as a dashboard reads it: per model, in images, across routes."""
    (before,) = client.get_inference_statistics(CLASSIFIER)["model_stats"]
    client.infer(CLASSIFIER, [images_input(jpegs, binary=True)])
    version = client.get_model_metadata(CLASSIFIER)["versions"][0]
    (after,) = client.get_inference_statistics(CLASSIFIER, model_version=version)["model_stats"]
    assert (after["name"], after["version"]) == (CLASSIFIER, version)
    assert after["inference_count"] - before["inference_count"] == len(jpegs)
    assert after["execution_count"] > before["execution_count"]
    stats, earlier = after["inference_stats"], before["inference_stats"]
    for stage in ("success", "queue", "compute_input"):
        assert stats[stage]["count"] - earlier[stage]["count"] == len(jpegs), stage
    for stage in ("success", "queue", "compute_input", "compute_infer"):
        assert stats[stage]["ns"] > earlier[stage]["ns"], stage
    everything = client.get_inference_statistics()["model_stats"]
    assert [entry["name"] for entry in everything] == [CLASSIFIER, EMBEDDER]
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics(CLASSIFIER, model_version="1")
    assert caught.value.status() == "404" and version in caught.value.message()


def test_repository_index_lists_every_model_ready(client):
    index = client.get_model_repository_index()
    versions = {model: client.get_model_metadata(model)["versions"][0] for model in (CLASSIFIER, EMBEDDER)}
    assert index == [{"name": name, "version": version, "state": "READY", "reason": ""}
                     for name, version in versions.items()]


def test_unknown_model_and_version(client):
    assert not client.is_model_ready("no-such-model")
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no-such-model")
    assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata(CLASSIFIER, model_version="no-such-version")
    assert caught.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_images_match_classify_and_embed(server, client, jpegs, classified, binary):
    result = client.infer(
        CLASSIFIER, [images_input(jpegs, binary=binary)],
        outputs=[
            triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=TOP),
            triton.InferRequestedOutput("embedding", binary_data=binary),
        ],
        request_id=f"bytes-{binary}",
    )
    response = result.get_response()
    assert response["id"] == f"bytes-{binary}" and response["model_name"] == CLASSIFIER
    assert_matches_classify(result.as_numpy("probabilities"), classified)
    embedding = result.as_numpy("embedding")
    assert embedding.dtype == np.float32 and embedding.shape == (len(jpegs), 1280)
    np.testing.assert_allclose(normalised(embedding), embedded(server, jpegs, CLASSIFIER), atol=1e-5)


def test_default_outputs_are_all_of_them_in_binary(client, jpegs, classified):
    result = client.infer(CLASSIFIER, [images_input(jpegs, binary=True)])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert set(names) == {"logits", "probabilities", "embedding"}
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(jpegs), 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    logits = result.as_numpy("logits")
    assert (np.argmax(logits, axis=1) == [p[0]["index"] for p in classified]).all()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_fp32_matches_classify(client, manifest, jpegs, classified, binary):
    spec = manifest.preprocessing
    # JSON carries about 20 bytes per float: one 224-px image stays under the e2e server's 4 MiB limit.
    count = len(jpegs) if binary else 1
    pixels = np.stack([preprocess(decode_image(data, min_side=spec.resize_size), spec) for data in list(jpegs.values())[:count]])
    tensor = triton.InferInput(manifest.io.input.name, list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    version = client.get_model_metadata(CLASSIFIER)["versions"][0]
    result = client.infer(
        CLASSIFIER, [tensor], model_version=version, request_id="fp32",
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=TOP)],
    )
    assert result.get_response()["id"] == "fp32"
    assert_matches_classify(result.as_numpy("probabilities"), classified[:count])


def test_classification_on_logits_reports_logit_values(client, jpegs, classified):
    result = client.infer(
        CLASSIFIER, [images_input(jpegs, binary=True)],
        outputs=[triton.InferRequestedOutput("logits", class_count=1)],
    )
    top = result.as_numpy("logits")
    assert [int(text(row[0]).split(":")[1]) for row in top] == [p[0]["index"] for p in classified]


def test_embedder_matches_embed(server, client, jpegs):
    result = client.infer(EMBEDDER, [images_input(jpegs, binary=True)],
                          outputs=[triton.InferRequestedOutput("embedding")])
    np.testing.assert_allclose(
        normalised(result.as_numpy("embedding")), embedded(server, jpegs, EMBEDDER), atol=1e-5
    )
    with pytest.raises(InferenceServerException) as caught:
        client.infer(EMBEDDER, [images_input(jpegs, binary=True)], outputs=[triton.InferRequestedOutput("logits")])
    assert caught.value.status() == "400" and "embedding" in caught.value.message()


# Malformed requests, sent raw ----------------------------------------------------------------------


def fp32(shape, **extra) -> dict:
    return {"name": "input", "datatype": "FP32", "shape": shape, **extra}


def binary_request(header: dict, data: bytes, delta: int = 0) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head) + delta)}


def json_request(*inputs, **extra) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"inputs": list(inputs), **extra}).encode(), {"Content-Type": "application/json"}


def jpeg_request(jpeg: bytes, **extra) -> tuple[bytes, dict[str, str]]:
    element = struct.pack("<I", len(jpeg)) + jpeg
    return binary_request(
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                     "parameters": {"binary_data_size": len(element)}}], **extra}, element)


MALFORMED = {
    "bad json": lambda jpeg: (b"{not json", {"Content-Type": "application/json"}),
    "empty body": lambda jpeg: (b"", {}),
    "no inputs": lambda jpeg: json_request(),
    "wrong datatype": lambda jpeg: json_request({"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}),
    "unknown datatype": lambda jpeg: json_request({"name": "x", "datatype": "STRING", "shape": [1], "data": ["a"]}),
    "wrong shape": lambda jpeg: json_request(fp32([1, 3, 8, 8], data=[0.0] * 192)),
    "shape vs data": lambda jpeg: json_request(fp32([1, 3, 224, 224], data=[0.0] * 10)),
    "negative dim": lambda jpeg: json_request(fp32([-1, 3, 224, 224], data=[0.0])),
    "bytes 2-d": lambda jpeg: json_request(
        {"name": "images", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}),
    "not base64": lambda jpeg: json_request({"name": "images", "datatype": "BYTES", "shape": [1], "data": ["@@@"]}),
    "not an image": lambda jpeg: json_request(
        {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b"hello").decode()]}),
    "two inputs": lambda jpeg: json_request(fp32([1], data=[0.0]), fp32([1], data=[0.0])),
    "header length past the body": lambda jpeg: binary_request(
        {"inputs": [fp32([1], parameters={"binary_data_size": 4})]}, b"\0" * 4, delta=100),
    "header length not a number": lambda jpeg: (json_request(fp32([1], data=[0.0]))[0],
                                                {"Inference-Header-Content-Length": "abc"}),
    "header length negative": lambda jpeg: (json_request(fp32([1], data=[0.0]))[0],
                                            {"Inference-Header-Content-Length": "-1"}),
    "byte count vs shape": lambda jpeg: binary_request(
        {"inputs": [fp32([1, 3, 224, 224], parameters={"binary_data_size": 16})]}, b"\0" * 16),
    "byte count past the body": lambda jpeg: binary_request(
        {"inputs": [fp32([1, 3, 224, 224], parameters={"binary_data_size": 602112})]}, b"\0" * 16),
    "bytes length prefix past the data": lambda jpeg: binary_request(
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]},
        struct.pack("<I", 10**6) + jpeg[:4]),
    "trailing bytes": lambda jpeg: (jpeg_request(jpeg)[0] + b"extra", jpeg_request(jpeg)[1]),
    "unknown output": lambda jpeg: jpeg_request(jpeg, outputs=[{"name": "scores"}]),
    "negative class count": lambda jpeg: jpeg_request(
        jpeg, outputs=[{"name": "probabilities", "parameters": {"classification": -3}}]),
    "id not a string": lambda jpeg: jpeg_request(jpeg, id=12),
}


@pytest.mark.parametrize("make", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_400_json(server, jpegs, make):
    body, headers = make(jpegs["chelsea"])
    response = httpx.post(f"{server.url}/v2/models/{CLASSIFIER}/infer", content=body, headers=headers, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]


@pytest.mark.parametrize("path", [
    "/v2/models/no-such-model/infer", f"/v2/models/{CLASSIFIER}/versions/no-such-version/infer",
])
def test_unknown_model_or_version_is_404(server, jpegs, path):
    body, headers = jpeg_request(jpegs["chelsea"])
    response = httpx.post(server.url + path, content=body, headers=headers, timeout=60)
    assert response.status_code == 404, response.text
    assert response.json()["error"]


def test_curl_style_json_request(server, jpegs, classified):
    """What the README's curl example sends: one base64 image in JSON, the classification extension."""
    body = {
        "id": "curl-1",
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                    "data": [base64.b64encode(jpegs["chelsea"]).decode()]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": TOP}}],
    }
    response = httpx.post(f"{server.url}/v2/models/{CLASSIFIER}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "curl-1"
    (output,) = answer["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, TOP]
    assert_matches_classify(np.array(output["data"], dtype=object).reshape(1, TOP), classified[:1])
